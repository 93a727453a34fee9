//! Signed tokens (JWT, ES256) for ServiceAccounts, signed with the cluster
//! CA's key, which every server member holds: any member can issue one and
//! any member can check one, with nothing more to replicate. The claims
//! are the caller's; this module only signs, verifies and checks the
//! registered claims (`exp`, `nbf`, `aud`).

use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

use crate::tls::ClusterCa;

/// Largest token accepted for verification.
pub const TOKEN_MAX_BYTES: usize = 16 * 1024;

/// Why a token is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("the token is not a JWT (three base64url parts)")]
    Malformed,
    #[error("the token is not signed with ES256 by this cluster")]
    BadSignature,
    #[error("the token expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token is not meant for this audience")]
    WrongAudience,
    #[error("the cluster CA key cannot sign tokens: {0}")]
    Key(String),
}

/// The last CA key parsed, by its PEM: a token is checked on every request
/// that presents one, and parsing the key costs more than the check.
static PARSED_KEY: Mutex<Option<(String, Arc<EcdsaKeyPair>)>> = Mutex::new(None);

impl ClusterCa {
    fn signing_key(&self) -> Result<Arc<EcdsaKeyPair>, JwtError> {
        let mut parsed = PARSED_KEY.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((pem, key)) = parsed.as_ref() {
            if *pem == self.key_pem {
                return Ok(key.clone());
            }
        }
        let der = rcgen::KeyPair::from_pem(&self.key_pem).map_err(|e| JwtError::Key(e.to_string()))?.serialize_der();
        let key = Arc::new(
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der, &ring::rand::SystemRandom::new())
                .map_err(|e| JwtError::Key(e.to_string()))?,
        );
        *parsed = Some((self.key_pem.clone(), key.clone()));
        Ok(key)
    }

    /// Signs `claims` as a compact JWT.
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, JwtError> {
        let key = self.signing_key()?;
        let kid = self.fingerprint().map(|f| f[..16].to_string()).unwrap_or_default();
        let header = json!({"alg": "ES256", "typ": "JWT", "kid": kid});
        let signing_input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature =
            key.sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes()).map_err(|_| JwtError::Key("signing failed".into()))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }

    /// Checks the signature, `nbf`, `exp` (seconds since the epoch against
    /// `now_secs`) and that `aud` holds `audience`; answers the claims.
    pub fn verify_jwt(&self, token: &str, audience: &str, now_secs: u64) -> Result<Value, JwtError> {
        if token.len() > TOKEN_MAX_BYTES {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(JwtError::Malformed);
        };
        let header: Value = URL_SAFE_NO_PAD.decode(h).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(JwtError::Malformed)?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(JwtError::BadSignature);
        }
        let signature = URL_SAFE_NO_PAD.decode(s).map_err(|_| JwtError::Malformed)?;
        let key = self.signing_key()?;
        let public = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, ring::signature::KeyPair::public_key(key.as_ref()).as_ref().to_vec());
        public.verify(format!("{h}.{c}").as_bytes(), &signature).map_err(|_| JwtError::BadSignature)?;
        let claims: Value = URL_SAFE_NO_PAD.decode(c).ok().and_then(|b| serde_json::from_slice(&b).ok()).ok_or(JwtError::Malformed)?;
        let number = |k: &str| claims.get(k).and_then(Value::as_u64);
        if number("exp").is_none_or(|exp| now_secs >= exp) {
            return Err(JwtError::Expired);
        }
        if number("nbf").is_some_and(|nbf| now_secs + 60 < nbf) {
            return Err(JwtError::NotYetValid);
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(a)) => a == audience,
            Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !audience_ok {
            return Err(JwtError::WrongAudience);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_tokens_verify_and_every_tampering_is_caught() {
        let ca = ClusterCa::generate("c1").unwrap();
        let claims = json!({"sub": "system:serviceaccount:dev:robot", "aud": ["flotilla"], "exp": 2000, "nbf": 1000});
        let token = ca.sign_jwt(&claims).unwrap();
        assert_eq!(ca.verify_jwt(&token, "flotilla", 1500).unwrap()["sub"], "system:serviceaccount:dev:robot");
        assert_eq!(ca.verify_jwt(&token, "flotilla", 2000), Err(JwtError::Expired));
        assert_eq!(ca.verify_jwt(&token, "flotilla", 100), Err(JwtError::NotYetValid));
        assert_eq!(ca.verify_jwt(&token, "someone-else", 1500), Err(JwtError::WrongAudience));
        let other = ClusterCa::generate("c2").unwrap();
        assert_eq!(other.verify_jwt(&token, "flotilla", 1500), Err(JwtError::BadSignature));
        let parts: Vec<&str> = token.split('.').collect();
        let forged =
            URL_SAFE_NO_PAD.encode(json!({"sub": "system:serviceaccount:kube-system:admin", "aud": "flotilla", "exp": 2000}).to_string());
        assert_eq!(ca.verify_jwt(&format!("{}.{forged}.{}", parts[0], parts[2]), "flotilla", 1500), Err(JwtError::BadSignature));
        let none_alg = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        assert_eq!(ca.verify_jwt(&format!("{none_alg}.{}.", parts[1]), "flotilla", 1500), Err(JwtError::BadSignature));
        for garbage in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"x".repeat(TOKEN_MAX_BYTES + 1)] {
            assert!(ca.verify_jwt(garbage, "flotilla", 1500).is_err(), "{garbage:?}");
        }
    }
}
