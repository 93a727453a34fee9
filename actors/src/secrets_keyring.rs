//! Encryption at rest for the kinds whose strategy asks for it (Secrets):
//! envelope encryption, as Kubernetes' `aesgcm` provider with a KMS-style
//! key hierarchy.
//!
//! A Secret's stored value is AES-256-GCM ciphertext under a data key
//! (DEK), with the store key as associated data, so a sealed value moved
//! to another key does not open. The DEKs live in the replicated store,
//! each sealed by the key-encryption key (KEK), which is never stored:
//! every server member derives it from the cluster CA's private key, which
//! it already holds and which agents never get. Raft's order is what makes
//! rotation safe: a value sealed under a DEK is always later in the log
//! than that DEK, so any member that has the value has the key.
//!
//! Rotation (`flotilla secrets rotate-key`) adds a DEK and marks the
//! others retiring in one transaction, rewrites every Secret under the new
//! one, then deletes the retiring keys once a scan begun after they were
//! marked finds nothing sealed under them. Every sealed write compares the
//! mod revision of the DEK record it used, so a writer holding a stale
//! keyring cannot seal under a key after it was marked retiring: its write
//! fails, it reloads and seals again.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use flotilla_raft::{Compare, CompareOp, CompareTarget, Consistency, KeyValue, Member, Outcome, StoreError, TxnOp};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Where the sealed DEKs live: `PREFIX` + a zero-padded sequence number,
/// so the newest sorts last.
pub const KEYS_PREFIX: &[u8] = b"/registry/flotilla.io/encryption-keys/";
/// The format byte of a sealed value (1 is plain JSON, see `object.rs`).
pub const FORMAT_SEALED_V1: u8 = 2;
/// The format byte of a DEK record.
const DEK_RECORD_V1: u8 = 1;
/// Flag bit of a DEK record: no new value may be sealed under it.
const DEK_RETIRING: u8 = 1;
/// What the KEK is derived with: a label for this use only, so the CA key
/// yields unrelated keys for anything else.
const KEK_SALT: &[u8] = b"flotilla secrets at rest, key-encryption key, v1";
/// DEK records read at once; a rotation leaves one, a crashed one a few.
const KEYS_LISTED_MAX: usize = 1_000;
/// Deleted DEKs a member keeps in memory for reads of older snapshots.
const GONE_KEYS_KEPT_MAX: usize = 16;

/// Why sealing or opening failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed value or DEK record that does not open: written under
    /// another cluster CA, tampered with, or moved to another key.
    #[error("{0}")]
    Corrupt(String),
}

/// One DEK as this member last read it.
struct DataKey {
    key: Arc<LessSafeKey>,
    /// The mod revision of its record: sealed writes compare it.
    mod_revision: u64,
    retiring: bool,
    /// Deleted from the store since this member read it: kept so a value
    /// read from a snapshot taken before the delete (a list page, a watch
    /// event) still opens.
    gone: bool,
}

/// The DEKs, and the KEK that opens them.
pub struct SecretsKeyring {
    kek: LessSafeKey,
    keys: Mutex<BTreeMap<String, DataKey>>,
    random: SystemRandom,
}

/// A value sealed for the store, and the compare that must hold for the
/// write (the DEK it used was still current when the write applied).
pub struct Sealed {
    pub value: Vec<u8>,
    pub guard: Compare,
    /// The DEK it was sealed under.
    pub key_name: String,
}

fn aead_key(bytes: &[u8]) -> Result<LessSafeKey, KeyringError> {
    UnboundKey::new(&AES_256_GCM, bytes).map(LessSafeKey::new).map_err(|_| KeyringError::Corrupt("a data key has the wrong length".into()))
}

fn key_name(store_key: &[u8]) -> Option<String> {
    store_key.strip_prefix(KEYS_PREFIX).and_then(|n| std::str::from_utf8(n).ok()).map(String::from)
}

fn record_key(name: &str) -> Vec<u8> {
    [KEYS_PREFIX, name.as_bytes()].concat()
}

impl SecretsKeyring {
    /// The keyring of a cluster whose CA key is `ca_key_pem`. Whitespace is
    /// ignored, so members that stored the PEM with other line ends agree.
    pub fn from_ca_key(ca_key_pem: &str) -> SecretsKeyring {
        let material: Vec<u8> = ca_key_pem.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, KEK_SALT).extract(&material);
        let okm = prk.expand(&[b"kek"], &AES_256_GCM).expect("32 bytes is a valid HKDF-SHA256 output length");
        SecretsKeyring { kek: LessSafeKey::new(UnboundKey::from(okm)), keys: Mutex::new(BTreeMap::new()), random: SystemRandom::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, DataKey>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn nonce(&self) -> Result<[u8; NONCE_LEN], KeyringError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random.fill(&mut nonce).map_err(|_| KeyringError::Corrupt("the system's random source failed".into()))?;
        Ok(nonce)
    }

    /// `[format][nonce][ciphertext and tag]` of `plain` under `key`.
    fn encrypt(&self, key: &LessSafeKey, format: &[u8], aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, KeyringError> {
        let nonce = self.nonce()?;
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut body)
            .map_err(|_| KeyringError::Corrupt("encryption failed".into()))?;
        Ok([format, &nonce, &body].concat())
    }

    fn decrypt(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < NONCE_LEN {
            return None;
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut body = body.to_vec();
        let plain = key.open_in_place(nonce, Aad::from(aad), &mut body).ok()?;
        Some(plain.to_vec())
    }

    fn open_record(&self, store_key: &[u8], value: &[u8]) -> Result<(LessSafeKey, bool), KeyringError> {
        let corrupt = || {
            KeyringError::Corrupt(format!(
                "the data key {} does not open with this cluster's key-encryption key (a store restored under another CA?)",
                String::from_utf8_lossy(store_key)
            ))
        };
        let [DEK_RECORD_V1, flags, sealed @ ..] = value else { return Err(corrupt()) };
        let dek = Self::decrypt(&self.kek, store_key, sealed).ok_or_else(corrupt)?;
        Ok((aead_key(&dek)?, flags & DEK_RETIRING != 0))
    }

    /// Reads every DEK record again (linearizable: called when a value
    /// names a key this member has not seen, or a sealed write lost its
    /// guard).
    pub async fn reload(&self, member: &Member) -> Result<(), KeyringError> {
        self.read_records(member).await.map(drop)
    }

    /// Reads the DEK records (linearizable), takes them as this member's
    /// view and answers them as stored.
    async fn read_records(&self, member: &Member) -> Result<Vec<KeyValue>, KeyringError> {
        let page = member.range(KEYS_PREFIX, KEYS_LISTED_MAX, None, Consistency::Linearizable).await?;
        let mut keys = BTreeMap::new();
        for kv in &page.kvs {
            let Some(name) = key_name(&kv.key) else { continue };
            let (key, retiring) = self.open_record(&kv.key, &kv.value)?;
            keys.insert(name, DataKey { key: Arc::new(key), mod_revision: kv.mod_revision, retiring, gone: false });
        }
        let mut held = self.lock();
        // A page read a moment before a rotation deleted a key may still
        // hold values sealed under it: the key stays known, never used.
        let gone: Vec<(String, Arc<LessSafeKey>)> =
            held.iter().filter(|(n, _)| !keys.contains_key(*n)).map(|(n, k)| (n.clone(), k.key.clone())).collect();
        for (name, key) in gone.into_iter().rev().take(GONE_KEYS_KEPT_MAX) {
            keys.insert(name, DataKey { key, mod_revision: 0, retiring: true, gone: true });
        }
        *held = keys;
        Ok(page.kvs)
    }

    /// The name, key and record revision new values are sealed under.
    fn active(&self) -> Option<(String, Arc<LessSafeKey>, u64)> {
        self.lock().iter().rev().find(|(_, k)| !k.retiring && !k.gone).map(|(n, k)| (n.clone(), k.key.clone(), k.mod_revision))
    }

    /// Seals the plain encoding of an object bound for `store_key`. The
    /// first Secret of a cluster creates its first DEK.
    pub async fn seal(&self, member: &Member, store_key: &[u8], plain: &[u8]) -> Result<Sealed, KeyringError> {
        if self.active().is_none() {
            self.reload(member).await?;
        }
        if self.active().is_none() {
            self.add_key(member, false).await?;
        }
        let (name, key, mod_revision) = self.active().ok_or_else(|| KeyringError::Corrupt("no data key could be made or read".into()))?;
        let mut header = vec![FORMAT_SEALED_V1, name.len() as u8];
        header.extend_from_slice(name.as_bytes());
        let value = self.encrypt(&key, &header, store_key, plain)?;
        let guard = Compare { key: record_key(&name), op: CompareOp::Equal, target: CompareTarget::ModRevision(mod_revision) };
        Ok(Sealed { value, guard, key_name: name })
    }

    /// The DEK a stored value was sealed under, if it is sealed.
    pub fn sealed_under(stored: &[u8]) -> Option<&str> {
        let [FORMAT_SEALED_V1, len, rest @ ..] = stored else { return None };
        rest.get(..*len as usize).and_then(|n| std::str::from_utf8(n).ok())
    }

    /// The plain encoding of a stored value: sealed values are opened,
    /// others returned as they are.
    pub async fn open<'a>(&self, member: &Member, store_key: &[u8], stored: &'a [u8]) -> Result<Cow<'a, [u8]>, KeyringError> {
        let Some(name) = Self::sealed_under(stored) else { return Ok(Cow::Borrowed(stored)) };
        let header_len = 2 + name.len();
        let known = self.lock().get(name).map(|k| k.key.clone());
        let key = match known {
            Some(key) => key,
            None => {
                self.reload(member).await?;
                self.lock().get(name).map(|k| k.key.clone()).ok_or_else(|| {
                    KeyringError::Corrupt(format!(
                        "{} is sealed under data key {name:?}, which the store does not hold",
                        String::from_utf8_lossy(store_key)
                    ))
                })?
            }
        };
        Self::decrypt(&key, store_key, &stored[header_len..]).map(Cow::Owned).ok_or_else(|| {
            KeyringError::Corrupt(format!("{} does not open: tampered with, or moved from another key", String::from_utf8_lossy(store_key)))
        })
    }

    /// Whether the DEK `name` is the one new values are sealed under.
    pub fn is_active(&self, name: &str) -> bool {
        self.active().is_some_and(|(active, _, _)| active == name)
    }

    /// Adds a DEK after the newest; with `retire_others`, marks every
    /// other one retiring in the same transaction.
    pub async fn add_key(&self, member: &Member, retire_others: bool) -> Result<(), KeyringError> {
        let records = self.read_records(member).await?;
        // Gone keys count too: a name is never given out twice.
        let newest = self.lock().keys().next_back().and_then(|n| n.parse::<u64>().ok());
        let name = format!("{:020}", newest.map_or(1, |n| n + 1));
        let mut dek = [0u8; 32];
        self.random.fill(&mut dek).map_err(|_| KeyringError::Corrupt("the system's random source failed".into()))?;
        let store_key = record_key(&name);
        let record = self.encrypt(&self.kek, &[DEK_RECORD_V1, 0], &store_key, &dek)?;
        let mut compares = vec![Compare { key: store_key.clone(), op: CompareOp::Equal, target: CompareTarget::Version(0) }];
        let mut ops = vec![TxnOp::Put { key: store_key, value: record }];
        if retire_others {
            for kv in records {
                let mut value = kv.value.clone();
                if let Some(flags) = value.get_mut(1) {
                    *flags |= DEK_RETIRING;
                }
                compares.push(Compare { key: kv.key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(kv.mod_revision) });
                // Rewritten even when already retiring: its mod revision
                // moves, so a writer that read it before fails its guard.
                ops.push(TxnOp::Put { key: kv.key, value });
            }
        }
        // Lost to another writer of the keyring (two rotations at once):
        // theirs stands, and is read below.
        let result = member.txn(compares, ops, vec![]).await?;
        if !matches!(result.outcome, Outcome::Txn { succeeded: true, .. }) {
            tracing::info!("another writer changed the Secrets' data keys at the same time; keeping theirs");
        }
        self.reload(member).await
    }

    /// The DEKs marked retiring, with their records' revisions, read anew.
    pub async fn retiring(&self, member: &Member) -> Result<Vec<(String, u64)>, KeyringError> {
        self.reload(member).await?;
        Ok(self.lock().iter().filter(|(_, k)| k.retiring && !k.gone).map(|(n, k)| (n.clone(), k.mod_revision)).collect())
    }

    /// Deletes DEKs the caller has proved unused (see
    /// `Registry::rotate_secrets_key`), each only if its record is as the
    /// caller read it. Answers how many went.
    pub async fn delete_keys(&self, member: &Member, keys: &[(String, u64)]) -> Result<usize, KeyringError> {
        if keys.is_empty() {
            return Ok(0);
        }
        let compares = keys
            .iter()
            .map(|(n, rev)| Compare { key: record_key(n), op: CompareOp::Equal, target: CompareTarget::ModRevision(*rev) })
            .collect();
        let ops = keys.iter().map(|(n, _)| TxnOp::Delete { key: record_key(n), prefix: false }).collect();
        let result = member.txn(compares, ops, vec![]).await?;
        self.reload(member).await?;
        // Changed since (another rotation marked them again): they stay
        // until a rotation proves them unused once more.
        Ok(if matches!(result.outcome, Outcome::Txn { succeeded: true, .. }) { keys.len() } else { 0 })
    }

    /// The name of the DEK new values are sealed under, if there is one.
    pub fn active_name(&self) -> Option<String> {
        self.active().map(|(n, _, _)| n)
    }

    /// The DEKs by name, with whether each is retiring (for status output).
    pub fn keys(&self) -> Vec<(String, bool)> {
        self.lock().iter().filter(|(_, k)| !k.gone).map(|(n, k)| (n.clone(), k.retiring)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kek_depends_on_the_ca_key_only() {
        let a = SecretsKeyring::from_ca_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
        let same = SecretsKeyring::from_ca_key("-----BEGIN PRIVATE KEY-----\r\nAAAA\r\n-----END PRIVATE KEY-----");
        let other = SecretsKeyring::from_ca_key("-----BEGIN PRIVATE KEY-----\nBBBB\n-----END PRIVATE KEY-----\n");
        let record = a.encrypt(&a.kek, &[DEK_RECORD_V1, 0], b"/k/1", &[7u8; 32]).unwrap();
        assert!(same.open_record(b"/k/1", &record).is_ok(), "line ends do not matter");
        assert!(matches!(other.open_record(b"/k/1", &record), Err(KeyringError::Corrupt(_))), "another CA's key does not open it");
        assert!(a.open_record(b"/k/2", &record).is_err(), "a record moved to another key does not open");
    }

    #[test]
    fn sealed_values_name_their_key_and_bind_to_their_store_key() {
        let ring = SecretsKeyring::from_ca_key("ca");
        let dek = aead_key(&[1u8; 32]).unwrap();
        let mut header = vec![FORMAT_SEALED_V1, 3];
        header.extend_from_slice(b"k01");
        let sealed = ring.encrypt(&dek, &header, b"/registry/secrets/default/a", b"{\"data\":1}").unwrap();
        assert_eq!(SecretsKeyring::sealed_under(&sealed), Some("k01"));
        assert!(!sealed.windows(8).any(|w| w == b"\"data\":1"), "the plain text is not in the sealed value");
        let body = &sealed[header.len()..];
        assert_eq!(SecretsKeyring::decrypt(&dek, b"/registry/secrets/default/a", body).as_deref(), Some(&b"{\"data\":1}"[..]));
        assert_eq!(SecretsKeyring::decrypt(&dek, b"/registry/secrets/default/b", body), None);
        let mut flipped = body.to_vec();
        flipped[NONCE_LEN] ^= 1;
        assert_eq!(SecretsKeyring::decrypt(&dek, b"/registry/secrets/default/a", &flipped), None);
        assert_eq!(SecretsKeyring::sealed_under(b"\x01{}"), None, "plain JSON is not sealed");
        assert_eq!(SecretsKeyring::sealed_under(&[FORMAT_SEALED_V1, 200, b'k']), None, "a short header is not a name");
    }
}
