//! Where new identities come from: object uids, `generateName` suffixes
//! and Event names. Randomness enters the registry only through this
//! trait, so a seeded source makes what it writes reproducible.

use std::sync::{Arc, Mutex};

use rand::{Rng, RngCore, SeedableRng};

/// Consonants and digits Kubernetes uses for generated names, so no word
/// is spelled by accident.
const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// Length of a `generateName` suffix, as in Kubernetes.
const NAME_SUFFIX_LEN: usize = 5;

pub trait Identities: Send + Sync + 'static {
    /// A fresh object uid.
    fn uid(&self) -> String;
    /// Five characters appended to a `generateName` prefix.
    fn name_suffix(&self) -> String;
    /// A number that makes an Event's name unique.
    fn event_suffix(&self) -> u64;
}

pub type SharedIdentities = Arc<dyn Identities>;

/// Draws from a random number generator: the operating system's by
/// default, or one seeded for a reproducible run.
pub struct RandomIdentities(Mutex<rand::rngs::StdRng>);

impl RandomIdentities {
    pub fn from_entropy() -> SharedIdentities {
        Arc::new(RandomIdentities(Mutex::new(rand::rngs::StdRng::from_entropy())))
    }

    pub fn seeded(seed: u64) -> SharedIdentities {
        Arc::new(RandomIdentities(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut rand::rngs::StdRng) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Identities for RandomIdentities {
    fn uid(&self) -> String {
        let mut bytes = [0u8; 16];
        self.with(|r| r.fill_bytes(&mut bytes));
        uuid::Builder::from_random_bytes(bytes).into_uuid().to_string()
    }

    fn name_suffix(&self) -> String {
        self.with(|r| (0..NAME_SUFFIX_LEN).map(|_| NAME_ALPHABET[r.gen_range(0..NAME_ALPHABET.len())] as char).collect())
    }

    fn event_suffix(&self) -> u64 {
        self.with(|r| r.gen())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_identities_and_uids_are_version_4() {
        let (a, b) = (RandomIdentities::seeded(7), RandomIdentities::seeded(7));
        assert_eq!((a.uid(), a.name_suffix(), a.event_suffix()), (b.uid(), b.name_suffix(), b.event_suffix()));
        let uid = uuid::Uuid::parse_str(&RandomIdentities::from_entropy().uid()).expect("a uuid");
        assert_eq!(uid.get_version_num(), 4);
        let suffix = a.name_suffix();
        assert_eq!(suffix.len(), NAME_SUFFIX_LEN);
        assert!(suffix.bytes().all(|c| NAME_ALPHABET.contains(&c)), "{suffix}");
    }
}
