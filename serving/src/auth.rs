//! Who is calling, and what they may do (`[auth]`).
//!
//! A request names its token (`Authorization: Bearer <token>` on HTTP, the password on the Postgres
//! wire); the token's SHA-256 is compared with every configured hash in constant time, so neither
//! a match's position nor a near miss shows in the time taken. A token holds scopes: `read`
//! (queries, SQL, the wire, views, status), `ingest` (`POST /v1/events`), `admin` (a recompute on
//! request). `/livez`, `/readyz` and `/openapi.json` stay open; `/metrics` needs `read` unless
//! `[auth] open_metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tributary_schemas::config::{AuthConfig, Scope, TokenDef};

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Auth {
    enabled: bool,
    open_metrics: bool,
    tokens: Vec<Arc<TokenDef>>,
    /// Per token with `max_requests_per_s`: a bucket of that many requests, refilled each second.
    buckets: HashMap<String, Mutex<Bucket>>,
}

/// A token bucket.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one that is not configured (401).
    Unauthenticated { needs: Scope, presented: bool },
    /// A known token without the scope (403).
    Forbidden { token: String, needs: Scope },
}

impl Denied {
    /// The token's name, when it was a known one.
    pub fn token(&self) -> Option<&str> {
        match self {
            Denied::Forbidden { token, .. } => Some(token),
            Denied::Unauthenticated { .. } => None,
        }
    }

    pub fn message(&self, what: &str) -> String {
        match self {
            Denied::Unauthenticated {
                needs,
                presented: false,
            } => format!(
                "{what} needs a token with scope {needs}: send Authorization: Bearer <token>"
            ),
            Denied::Unauthenticated {
                needs,
                presented: true,
            } => format!(
                "the token is not a configured one; {what} needs a token with scope {needs}"
            ),
            Denied::Forbidden { token, needs } => {
                format!("token {token:?} lacks scope {needs}, which {what} needs")
            }
        }
    }
}

/// The SHA-256 of a token, as configured.
pub fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// [`token_hash`] as the configuration writes it: 64 hex digits.
pub fn token_hash_hex(token: &str) -> String {
    token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `a == b` in time independent of where they differ.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

impl Auth {
    pub fn new(config: &AuthConfig) -> Self {
        let buckets = (config.tokens.iter())
            .filter_map(|t| {
                let rate = f64::from(t.max_requests_per_s?);
                let bucket = Bucket {
                    rate,
                    tokens: rate,
                    refilled: Instant::now(),
                };
                Some((t.name.clone(), Mutex::new(bucket)))
            })
            .collect();
        Self {
            enabled: config.enabled,
            open_metrics: config.open_metrics,
            tokens: config.tokens.iter().cloned().map(Arc::new).collect(),
            buckets,
        }
    }

    /// Takes one request from `token`'s rate (`max_requests_per_s`): `Err` with the seconds to
    /// wait when there is none left.
    pub fn take(&self, token: &TokenDef) -> Result<(), u64> {
        let Some(bucket) = self.buckets.get(&token.name) else {
            return Ok(());
        };
        let mut bucket = bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * bucket.rate).min(bucket.rate);
        bucket.refilled = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(((1.0 - bucket.tokens) / bucket.rate).ceil().max(1.0) as u64)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `/metrics` needs a token.
    pub fn metrics_need_token(&self) -> bool {
        self.enabled && !self.open_metrics
    }

    /// The token named `name`, when auth is on (the Postgres wire's authenticated user).
    pub fn named(&self, name: &str) -> Option<Arc<TokenDef>> {
        let found = self.tokens.iter().find(|t| t.name == name);
        found.filter(|_| self.enabled).cloned()
    }

    /// The configured token `token` is, checked against every hash.
    pub fn identify(&self, token: &str) -> Option<Arc<TokenDef>> {
        let hash = token_hash(token);
        let mut found = None;
        for def in &self.tokens {
            if same(&def.sha256, &hash) {
                found = Some(Arc::clone(def));
            }
        }
        found
    }

    /// The caller of something that needs `needs`, from the token it presented: `Ok(None)` when
    /// auth is off.
    pub fn check(
        &self,
        token: Option<&str>,
        needs: Scope,
    ) -> Result<Option<Arc<TokenDef>>, Denied> {
        if !self.enabled {
            return Ok(None);
        }
        let Some(token) = token else {
            return Err(Denied::Unauthenticated {
                needs,
                presented: false,
            });
        };
        let Some(def) = self.identify(token) else {
            return Err(Denied::Unauthenticated {
                needs,
                presented: true,
            });
        };
        if !def.scopes.contains(&needs) {
            return Err(Denied::Forbidden {
                token: def.name.clone(),
                needs,
            });
        }
        Ok(Some(def))
    }
}

#[cfg(test)]
mod tests {
    use tributary_schemas::config::parse_sha256;

    use super::*;

    fn auth() -> Auth {
        let token = |name: &str, secret: &str, scopes: &[Scope]| TokenDef {
            name: name.to_owned(),
            sha256: token_hash(secret),
            scopes: scopes.to_vec(),
            row_filters: Vec::new(),
            max_requests_per_s: (name == "ops").then_some(2),
        };
        Auth::new(&AuthConfig {
            enabled: true,
            allow_unauthenticated: false,
            open_metrics: false,
            audit_log: String::new(),
            tokens: vec![
                token("grafana", "s3cret", &[Scope::Read]),
                token("ops", "0ps", &[Scope::Read, Scope::Admin]),
            ],
        })
    }

    #[test]
    fn a_token_is_known_by_its_hash_and_holds_its_scopes() {
        // The configured form: sha256("test") as hex.
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(token_hash("test"), parse_sha256(hash).unwrap());
        let auth = auth();
        assert_eq!(
            auth.check(Some("s3cret"), Scope::Read)
                .unwrap()
                .unwrap()
                .name,
            "grafana"
        );
        assert_eq!(
            auth.check(Some("s3cret"), Scope::Admin).unwrap_err(),
            Denied::Forbidden {
                token: "grafana".to_owned(),
                needs: Scope::Admin
            }
        );
        assert!(auth.check(Some("0ps"), Scope::Admin).is_ok());
        assert_eq!(
            auth.check(Some("s3cret "), Scope::Read).unwrap_err(),
            Denied::Unauthenticated {
                needs: Scope::Read,
                presented: true
            }
        );
        let missing = auth.check(None, Scope::Ingest).unwrap_err();
        assert!(missing.message("POST /v1/events").contains("scope ingest"));
        assert!(
            Auth::default().check(None, Scope::Admin).unwrap().is_none(),
            "auth off"
        );
    }
}
