//! Who a connection is: signed tokens (JWT), the identity their claims
//! attest, and the rooms they open.
//!
//! With an [`Auth`] configured, every connection presents a token (`?token=`
//! or `Authorization: Bearer`) and is refused with `401` before the upgrade
//! unless it verifies. The verified [`Claims`] then decide the connection's
//! identity metadata (`userId`, `username`, `avatar`, `role`, which the
//! client cannot change) and which rooms it may join or only watch.
//!
//! Verification is `jsonwebtoken`'s: one configured algorithm (a token
//! naming another, or `none`, is refused), signature, `exp` (required, and
//! in the future: a connection closes when its token expires), `nbf` (with
//! [`LEEWAY_SECS`] of clock skew), and `aud`/`iss` when configured.

use crate::error::ServerError;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Clock skew tolerated on `nbf`, in seconds.
pub const LEEWAY_SECS: u64 = 5;

/// The metadata fields a token attests. A client may not set or change
/// them on a server with authentication.
pub const IDENTITY_FIELDS: [&str; 4] = ["userId", "username", "avatar", "role"];

/// How tokens are verified: one key, one algorithm, and optionally the
/// audience and issuer they must name. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Auth")
            .field("algorithm", &self.algorithm())
            .field("audience", &self.validation.aud)
            .field("issuer", &self.validation.iss)
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Result<Auth, ServerError> {
        if secret.is_empty() {
            return Err(ServerError::Config("the token secret is empty".into()));
        }
        Ok(Auth::new(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
        ))
    }

    /// HS256 with the secret in `path` (its contents, surrounding
    /// whitespace trimmed).
    pub fn hs256_from_file(path: impl AsRef<Path>) -> Result<Auth, ServerError> {
        Auth::hs256(&read_secret(path.as_ref())?)
    }

    /// A PEM public key: RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA),
    /// recognised from the key itself.
    pub fn public_key_pem(pem: &[u8]) -> Result<Auth, ServerError> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Auth::new(key, Algorithm::RS256));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            // An uncompressed P-256 point is 65 bytes; other curves would
            // only fail every token later, so say so now.
            if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(65) {
                return Err(ServerError::Config(
                    "only P-256 (ES256) elliptic-curve keys are supported".into(),
                ));
            }
            return Ok(Auth::new(key, Algorithm::ES256));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Ok(Auth::new(key, Algorithm::EdDSA));
        }
        Err(ServerError::Config(
            "not a PEM public key of RSA, P-256 or Ed25519".into(),
        ))
    }

    /// [`Auth::public_key_pem`] from a file.
    pub fn public_key_file(path: impl AsRef<Path>) -> Result<Auth, ServerError> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| {
            ServerError::Config(format!("cannot read public key {}: {e}", path.display()))
        })?;
        Auth::public_key_pem(&pem)
    }

    fn new(key: DecodingKey, algorithm: Algorithm) -> Auth {
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Auth { key, validation }
    }

    /// Tokens must name this audience (`aud`).
    pub fn audience(mut self, audience: &str) -> Self {
        self.validation.set_audience(&[audience]);
        self.validation.validate_aud = true;
        self.validation.required_spec_claims.insert("aud".into());
        self
    }

    /// Tokens must name this issuer (`iss`).
    pub fn issuer(mut self, issuer: &str) -> Self {
        self.validation.set_issuer(&[issuer]);
        self.validation.required_spec_claims.insert("iss".into());
        self
    }

    /// The algorithm tokens must be signed with (`HS256`, `RS256`, ...).
    pub fn algorithm(&self) -> String {
        format!("{:?}", self.validation.algorithms[0])
    }

    /// Verifies a token and returns its claims. The error says why it was
    /// refused, for the server's log; clients are told nothing more than
    /// `401`.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| TokenError(e.to_string()))?;
        let claims = data.claims;
        if claims.sub.is_empty() {
            return Err(TokenError("empty sub".into()));
        }
        // No leeway on `exp`: a connection is closed when its token
        // expires, so a reconnect with that token must be refused, not let
        // in to be closed again at once.
        if claims.time_left().is_zero() {
            return Err(TokenError("ExpiredSignature".into()));
        }
        Ok(claims)
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token refused: {0}")]
pub struct TokenError(String);

/// The claims of a verified token that the server uses. Unknown claims are
/// ignored; a known claim of the wrong type makes the token invalid.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Claims {
    /// The user's id; becomes `userId`.
    pub sub: String,
    /// Display name; becomes `username`.
    #[serde(default)]
    pub name: Option<String>,
    /// Avatar URL; becomes `avatar`.
    #[serde(default)]
    pub picture: Option<String>,
    /// Role; becomes `role`.
    #[serde(default)]
    pub role: Option<String>,
    /// Rooms (exact names or `*` globs) the holder may join and publish
    /// in; `None` means every room.
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
    /// Rooms (same form) the holder may only watch: subscribe to presence
    /// and read.
    #[serde(default)]
    pub watch: Option<Vec<String>>,
    /// More metadata, merged under the identity fields.
    #[serde(default)]
    pub meta: Option<Map<String, Value>>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
}

impl Claims {
    /// The connection metadata these claims attest: `meta`, then the
    /// identity fields over it.
    pub fn metadata(&self) -> Value {
        let mut out = self.meta.clone().unwrap_or_default();
        out.insert("userId".into(), Value::String(self.sub.clone()));
        let optional = [
            ("username", &self.name),
            ("avatar", &self.picture),
            ("role", &self.role),
        ];
        for (field, value) in optional {
            match value {
                Some(v) => out.insert(field.into(), Value::String(v.clone())),
                // `meta` cannot smuggle in an identity field the token
                // does not attest.
                None => out.remove(field),
            };
        }
        Value::Object(out)
    }

    /// Whether the holder may join (and publish in) `room`.
    pub fn may_join(&self, room: &str) -> bool {
        match &self.rooms {
            None => true,
            Some(patterns) => matches_any(patterns, room),
        }
    }

    /// Whether the holder may read `room`: subscribe to its presence, get
    /// its state and metadata. Joinable rooms are readable.
    pub fn may_read(&self, room: &str) -> bool {
        self.may_join(room) || self.watch.as_deref().is_some_and(|w| matches_any(w, room))
    }

    /// Time left before the token expires (zero if it has).
    pub fn time_left(&self) -> Duration {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Duration::from_secs(self.exp).saturating_sub(now)
    }
}

fn matches_any(patterns: &[String], room: &str) -> bool {
    patterns.iter().any(|p| glob_match(p, room))
}

/// `*` matches any run of characters (including none); everything else
/// matches itself. Room names may contain `?` or `[`, so no other
/// wildcard exists.
pub(crate) fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    // Where the last `*` was and how much of `name` it had taken.
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The token a handshake carries: `Authorization: Bearer T`, else the
/// `token` query parameter.
pub(crate) fn token_of<'a>(
    authorization: Option<&'a str>,
    query: Option<&'a str>,
) -> Option<&'a str> {
    let bearer = authorization.and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    });
    bearer.or(query.filter(|t| !t.is_empty()))
}

/// Signs `claims` with HS256, as `mesh-server token` does.
pub fn sign_hs256(secret: &[u8], claims: &Value) -> Result<String, ServerError> {
    if secret.is_empty() {
        return Err(ServerError::Config("the token secret is empty".into()));
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| ServerError::Config(format!("cannot sign the token: {e}")))
}

/// Reads a secret file, surrounding whitespace trimmed.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, ServerError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ServerError::Config(format!("cannot read secret {}: {e}", path.display())))?;
    Ok(bytes.trim_ascii().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("team", "team"));
        assert!(!glob_match("team", "team2"));
        assert!(glob_match("doc:*", "doc:"));
        assert!(glob_match("doc:*", "doc:12"));
        assert!(!glob_match("doc:*", "xdoc:12"));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(glob_match("a*b*c", "abbc"));
        assert!(!glob_match("a*b*c", "abx"));
        assert!(glob_match("what?", "what?"));
        assert!(!glob_match("what?", "whats"));
    }

    #[test]
    fn token_sources() {
        assert_eq!(token_of(Some("Bearer abc"), Some("q")), Some("abc"));
        assert_eq!(token_of(Some("bearer  abc "), None), Some("abc"));
        assert_eq!(token_of(Some("Basic abc"), Some("q")), Some("q"));
        assert_eq!(token_of(None, Some("")), None);
        assert_eq!(token_of(None, None), None);
    }

    #[test]
    fn claims_become_metadata_and_access() {
        let claims: Claims = serde_json::from_value(json!({
            "sub": "u1", "name": "Ada", "exp": 1,
            "meta": {"team": "core", "userId": "evil", "avatar": "x"},
            "rooms": ["team", "doc:*"], "watch": ["lobby"]
        }))
        .unwrap();
        assert_eq!(
            claims.metadata(),
            json!({"userId": "u1", "username": "Ada", "team": "core"})
        );
        assert!(claims.may_join("doc:1") && claims.may_read("doc:1"));
        assert!(!claims.may_join("lobby") && claims.may_read("lobby"));
        assert!(!claims.may_read("other"));
        let open: Claims = serde_json::from_value(json!({"sub": "u", "exp": 1})).unwrap();
        assert!(open.may_join("any"));
        // A known claim of the wrong type is no token at all.
        assert!(
            serde_json::from_value::<Claims>(json!({"sub": "u", "exp": 1, "rooms": "team"}))
                .is_err()
        );
    }
}
