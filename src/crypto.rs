//! OAuth tokens at rest: XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`), a random
//! 192-bit nonce per write, and the row's account and column as associated data so that a
//! sealed value cannot be moved to another row or column.
//!
//! The key comes from, in order: `[security] token_key` (normally the environment variable
//! `CCSYNC__SECURITY__TOKEN_KEY`), the file `[security] token_key_file`, or the systemd
//! credential `token_key` (`$CREDENTIALS_DIRECTORY/token_key`, from `LoadCredential=`).
//! Without a key, tokens are stored in plain text and `check-config` warns.
//!
//! Key text: one key per line, each 32 bytes as base64 (`openssl rand -base64 32`) or 64
//! hex digits; blank lines and `#` comments are ignored. The **first** key seals every new
//! write; all keys open. A sealed value names its key (`v1.<key id>.<base64>`, the key id
//! being the first 8 hex digits of the key's SHA-256), so keys can be rotated:
//!
//! 1. Put the new key on the first line and keep the old one below it; restart (or reload).
//! 2. Every refresh re-seals the row with the new key; an access token lives 24 h, so after
//!    a day every account has been rewritten (`ccsync auth status` shows each row's key id).
//! 3. Remove the old line. A row still sealed with a removed key fails to open with an error
//!    naming that key id: put the key back, or re-authorise the account.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret, SecretString};
use sha2::Digest;

use crate::config::SecuritySettings;

/// Name of the systemd credential holding the key.
pub const CREDENTIAL_NAME: &str = "token_key";
const VERSION: &str = "v1";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error(
        "{source_name}: no key in it (expected lines of base64 32-byte keys or 64 hex digits)"
    )]
    NoKey { source_name: String },
    #[error("{source_name}: line {line} is not a 32-byte key (base64 or 64 hex digits)")]
    BadKey { source_name: String, line: usize },
    #[error("cannot read the token key file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot seal the token")]
    Seal,
    #[error("stored token is not in the sealed format")]
    Malformed,
    #[error("stored token was sealed with key {key_id}, which is not configured (add it back to the key file, below the current key)")]
    UnknownKey { key_id: String },
    #[error("stored token does not open with key {key_id} (wrong key, or the value was altered or moved)")]
    Open { key_id: String },
    #[error("stored tokens are encrypted but no key is configured: set [security] token_key_file, CCSYNC__SECURITY__TOKEN_KEY or the systemd credential token_key")]
    KeyMissing,
}

struct Key {
    id: String,
    aead: XChaCha20Poly1305,
}

/// The configured token keys; the first seals.
pub struct TokenCipher {
    keys: Vec<Key>,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("TokenCipher")
            .field("key_ids", &ids)
            .finish()
    }
}

/// Where the key was found (for `check-config`), never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Setting,
    File(PathBuf),
    Credential(PathBuf),
}

impl std::fmt::Display for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Setting => f.write_str("security.token_key (CCSYNC__SECURITY__TOKEN_KEY)"),
            KeySource::File(p) => write!(f, "security.token_key_file {}", p.display()),
            KeySource::Credential(p) => write!(f, "systemd credential {}", p.display()),
        }
    }
}

fn decode_key(line: &str) -> Option<Zeroizing<Vec<u8>>> {
    let line = line.trim();
    if line.len() == 64 && line.chars().all(|c| c.is_ascii_hexdigit()) {
        let bytes: Option<Vec<u8>> = (0..32)
            .map(|i| u8::from_str_radix(&line[2 * i..2 * i + 2], 16).ok())
            .collect();
        return bytes.map(Zeroizing::new);
    }
    [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD]
        .iter()
        .find_map(|e| e.decode(line).ok())
        .map(Zeroizing::new)
        .filter(|b| b.len() == 32)
}

impl TokenCipher {
    /// Parses key text (see the module docs); `source_name` only labels errors.
    pub fn from_key_text(text: &str, source_name: &str) -> Result<TokenCipher, CryptoError> {
        let mut keys = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = decode_key(line).ok_or_else(|| CryptoError::BadKey {
                source_name: source_name.to_string(),
                line: i + 1,
            })?;
            let digest = sha2::Sha256::digest(&bytes[..]);
            let id: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
            let aead =
                XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey {
                    source_name: source_name.to_string(),
                    line: i + 1,
                })?;
            keys.push(Key { id, aead });
        }
        if keys.is_empty() {
            return Err(CryptoError::NoKey {
                source_name: source_name.to_string(),
            });
        }
        Ok(TokenCipher { keys })
    }

    /// The cipher the settings ask for, and where its key came from; `None` = no key.
    pub fn from_settings(
        sec: &SecuritySettings,
    ) -> Result<Option<(TokenCipher, KeySource)>, CryptoError> {
        if let Some(k) = &sec.token_key {
            let c = Self::from_key_text(k.expose_secret(), "security.token_key")?;
            return Ok(Some((c, KeySource::Setting)));
        }
        if let Some(p) = &sec.token_key_file {
            let c = Self::from_file(p, "security.token_key_file")?;
            return Ok(Some((c, KeySource::File(p.clone()))));
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = Path::new(&dir).join(CREDENTIAL_NAME);
            if p.is_file() {
                let c = Self::from_file(&p, "systemd credential token_key")?;
                return Ok(Some((c, KeySource::Credential(p))));
            }
        }
        Ok(None)
    }

    fn from_file(path: &Path, label: &str) -> Result<TokenCipher, CryptoError> {
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| CryptoError::Read {
                    path: path.to_path_buf(),
                    source,
                })?,
            );
        Self::from_key_text(&text, &format!("{label} {}", path.display()))
    }

    /// The id of the key that seals new writes.
    pub fn current_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plaintext` bound to `aad` with the current key and a fresh random nonce.
    pub fn seal(&self, plaintext: &str, aad: &str) -> Result<String, CryptoError> {
        let key = &self.keys[0];
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ct = key
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Seal)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + ct.len());
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ct);
        Ok(format!(
            "{VERSION}.{}.{}",
            key.id,
            URL_SAFE_NO_PAD.encode(blob)
        ))
    }

    /// Opens a value sealed by `seal` with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &str) -> Result<SecretString, CryptoError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(key_id), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Malformed);
        };
        let key =
            self.keys
                .iter()
                .find(|k| k.id == key_id)
                .ok_or_else(|| CryptoError::UnknownKey {
                    key_id: key_id.to_string(),
                })?;
        let blob = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| CryptoError::Malformed)?;
        if blob.len() < NONCE_LEN + 16 {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = blob.split_at(NONCE_LEN);
        let pt = key
            .aead
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ct,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Open {
                key_id: key_id.to_string(),
            })?;
        let pt = Zeroizing::new(pt);
        String::from_utf8(pt.to_vec())
            .map(SecretString::from)
            .map_err(|_| CryptoError::Malformed)
    }

    /// The key id a sealed value names, if it is one.
    pub fn key_id_of(sealed: &str) -> Option<&str> {
        let mut parts = sealed.splitn(3, '.');
        (parts.next() == Some(VERSION))
            .then(|| parts.next())
            .flatten()
    }
}

/// For `check-config`: a configured key that cannot be loaded is an error naming its key;
/// no key at all is a warning (tokens would be stored in plain text).
pub fn check_key(sec: &SecuritySettings) -> Result<Option<String>, crate::config::ConfigError> {
    match TokenCipher::from_settings(sec) {
        Ok(Some(_)) => Ok(None),
        Ok(None) => Ok(Some(
            "no token key configured: OAuth tokens are stored in plain text in \
             ccsync.oauth_tokens; set [security] token_key_file (or CCSYNC__SECURITY__TOKEN_KEY, \
             or the systemd credential token_key)"
                .to_string(),
        )),
        Err(e) => {
            let key = if sec.token_key.is_some() {
                "security.token_key"
            } else {
                "security.token_key_file"
            };
            Err(crate::config::ConfigError::invalid(key, e.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    const K2_HEX: &str = "a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebfc0";

    #[test]
    fn seal_then_open_round_trips_and_hides_the_plaintext() {
        let c = TokenCipher::from_key_text(K1, "test").unwrap();
        let sealed = c.seal("rt.very-secret", "a:refresh_token").unwrap();
        assert!(!sealed.contains("very-secret"));
        assert!(sealed.starts_with(&format!("v1.{}.", c.current_key_id())));
        let opened = c.open(&sealed, "a:refresh_token").unwrap();
        assert_eq!(opened.expose_secret(), "rt.very-secret");
    }

    #[test]
    fn each_seal_uses_a_fresh_nonce() {
        let c = TokenCipher::from_key_text(K1, "test").unwrap();
        assert_ne!(c.seal("x", "aad").unwrap(), c.seal("x", "aad").unwrap());
    }

    #[test]
    fn moved_or_altered_values_do_not_open() {
        let c = TokenCipher::from_key_text(K1, "test").unwrap();
        let sealed = c.seal("tok", "a:access_token").unwrap();
        assert!(matches!(
            c.open(&sealed, "b:access_token"),
            Err(CryptoError::Open { .. })
        ));
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert!(c.open(&tampered, "a:access_token").is_err());
        assert!(matches!(
            c.open("plain-token", "a:access_token"),
            Err(CryptoError::Malformed)
        ));
    }

    #[test]
    fn rotation_seals_with_the_first_key_and_opens_with_any() {
        let old = TokenCipher::from_key_text(K1, "old").unwrap();
        let sealed_old = old.seal("tok", "aad").unwrap();
        let rotated =
            TokenCipher::from_key_text(&format!("# new first\n{K2_HEX}\n\n{K1}\n"), "rot").unwrap();
        assert_ne!(rotated.current_key_id(), old.current_key_id());
        assert_eq!(
            rotated.open(&sealed_old, "aad").unwrap().expose_secret(),
            "tok"
        );
        let sealed_new = rotated.seal("tok", "aad").unwrap();
        assert_eq!(
            TokenCipher::key_id_of(&sealed_new),
            Some(rotated.current_key_id())
        );
        let only_new = TokenCipher::from_key_text(K2_HEX, "new").unwrap();
        assert!(matches!(
            only_new.open(&sealed_old, "aad"),
            Err(CryptoError::UnknownKey { .. })
        ));
    }

    #[test]
    fn bad_key_text_names_the_line_and_never_the_key() {
        let e = TokenCipher::from_key_text("\nc2hvcnQ=\n", "f").unwrap_err();
        assert!(matches!(e, CryptoError::BadKey { line: 2, .. }), "{e}");
        assert!(!e.to_string().contains("c2hvcnQ"));
        assert!(matches!(
            TokenCipher::from_key_text("# only a comment\n", "f"),
            Err(CryptoError::NoKey { .. })
        ));
        let c = TokenCipher::from_key_text(K1, "f").unwrap();
        assert!(!format!("{c:?}").contains(K1));
    }

    proptest! {
        #[test]
        fn any_text_round_trips(s in ".{0,200}", aad in "[a-z_:]{0,40}") {
            let c = TokenCipher::from_key_text(K1, "p").unwrap();
            let sealed = c.seal(&s, &aad).unwrap();
            let opened = c.open(&sealed, &aad).unwrap();
            prop_assert_eq!(opened.expose_secret(), s.as_str());
        }
    }
}
