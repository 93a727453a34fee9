//! The sealed form of a snapshot: a magic header, the payload, and a
//! SHA-256 of both. Snapshots sent to followers, kept in `snapshot.bin` and
//! saved as backups are all sealed, and a seal that does not check is
//! refused before a single key is replaced.

use sha2::{Digest, Sha256};

/// Names the format; bumped when the payload's shape changes.
const MAGIC: &[u8; 8] = b"FLSNAP1\0";
const DIGEST_BYTES: usize = 32;

/// Wraps `payload` with the header and its checksum.
pub fn seal(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAGIC.len() + payload.len() + DIGEST_BYTES);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(payload);
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// The payload of a sealed snapshot, or what is wrong with it.
pub fn unseal(sealed: &[u8]) -> Result<&[u8], String> {
    if sealed.len() < MAGIC.len() + DIGEST_BYTES {
        return Err(format!("snapshot of {} bytes is too short to be a flotilla snapshot", sealed.len()));
    }
    if &sealed[..MAGIC.len()] != MAGIC {
        return Err("not a flotilla snapshot, or one of another version (bad header)".into());
    }
    let (body, digest) = sealed.split_at(sealed.len() - DIGEST_BYTES);
    if Sha256::digest(body).as_slice() != digest {
        return Err("snapshot checksum does not match: the file is damaged".into());
    }
    Ok(&body[MAGIC.len()..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_payload_unseals_and_any_changed_byte_is_refused() {
        let sealed = seal(b"payload bytes");
        assert_eq!(unseal(&sealed).unwrap(), b"payload bytes");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert!(unseal(&bad).is_err(), "a flipped bit at {i} went unnoticed");
        }
        assert!(unseal(&sealed[..sealed.len() - 1]).is_err());
        assert_eq!(unseal(b"short").unwrap_err(), "snapshot of 5 bytes is too short to be a flotilla snapshot");
    }
}
