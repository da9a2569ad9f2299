//! `[auth]`: who may call what. Tokens are configured by name with the SHA-256 of the token
//! (never the token itself: `tributary token new` prints both), the scopes they hold and,
//! optionally per view, a row filter over the view's dimensions that every answer they get is
//! computed under.
//!
//! ```toml
//! [auth]
//! enabled = true
//! [[auth.tokens]]
//! name = "grafana"
//! sha256 = "<64 hex digits>"
//! scopes = ["read"]
//! [auth.tokens.row_filter]
//! pageviews = "country = 'DE'"
//! ```

use std::fmt;

use arrow::datatypes::{Field, Schema};
use datafusion::logical_expr::Expr;
use toml::{Table, Value as Toml};

use super::view::plan_filter;
use super::{Problem, Section, ViewDef, problem};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Read views: queries, SQL, the Postgres wire, views and status.
    Read,
    /// Push events (`POST /v1/events`).
    Ingest,
    /// Change state: run a recompute.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Ingest, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A token's filter on one view's rows.
#[derive(Debug, Clone)]
pub struct RowFilter {
    pub view: String,
    /// As configured.
    pub sql: String,
    /// Planned over the view's dimensions; it applies to state rows as they are.
    pub expr: Expr,
}

/// One configured token.
#[derive(Debug, Clone)]
pub struct TokenDef {
    pub name: String,
    pub sha256: [u8; 32],
    pub scopes: Vec<Scope>,
    pub row_filters: Vec<RowFilter>,
    /// Requests (HTTP) and statements (the wire) per second the token may make; past it, 429.
    pub max_requests_per_s: Option<u32>,
}

impl TokenDef {
    /// The token's filter on `view`, if it has one.
    pub fn row_filter(&self, view: &str) -> Option<&RowFilter> {
        self.row_filters.iter().find(|f| f.view == view)
    }
}

#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Requests need a token (all but the health probes).
    pub enabled: bool,
    /// Serve on a non-loopback address with auth disabled (refused otherwise).
    pub allow_unauthenticated: bool,
    /// `/metrics` without a token.
    pub open_metrics: bool,
    /// Where audit lines go: a file, `-` (stdout) or empty (off).
    pub audit_log: String,
    pub tokens: Vec<TokenDef>,
}

/// 64 hex digits as 32 bytes.
pub fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = [0; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

pub(super) fn validate_auth(
    merged: &Table,
    views: Option<&[ViewDef]>,
    problems: &mut Vec<Problem>,
) -> Option<AuthConfig> {
    let mut section = Section::new("auth", merged.get("auth"), problems)?;
    let enabled = section.boolean("enabled", problems);
    let allow_unauthenticated = section.boolean("allow_unauthenticated", problems);
    let open_metrics = section.boolean("open_metrics", problems);
    let audit_log = section.string("audit_log", problems);
    let tokens = match section.get("tokens") {
        Some(Toml::Array(tokens)) => Some(tokens),
        Some(_) => {
            problem(
                problems,
                "auth.tokens",
                "must be an array of tables ([[auth.tokens]])",
            );
            None
        }
        None => {
            problem(problems, "auth.tokens", "is missing");
            None
        }
    };
    section.finish(problems);
    let mut defs = Vec::new();
    for (i, token) in tokens.into_iter().flatten().enumerate() {
        let path = format!("auth.tokens[{i}]");
        if let Some(def) = validate_token(&path, token, views, problems) {
            if defs.iter().any(|d: &TokenDef| d.name == def.name) {
                problem(
                    problems,
                    format!("{path}.name"),
                    format!("{:?} names two tokens", def.name),
                );
            }
            if defs.iter().any(|d: &TokenDef| d.sha256 == def.sha256) {
                problem(
                    problems,
                    format!("{path}.sha256"),
                    "is another token's hash too",
                );
            }
            defs.push(def);
        }
    }
    let enabled = enabled?;
    if enabled && tokens.is_some_and(|t| t.is_empty()) {
        problem(
            problems,
            "auth.tokens",
            "auth is enabled but no token is configured: add one (`tributary token new NAME --scope read` prints its lines)",
        );
    }
    Some(AuthConfig {
        enabled,
        allow_unauthenticated: allow_unauthenticated?,
        open_metrics: open_metrics?,
        audit_log: audit_log?,
        tokens: defs,
    })
}

fn validate_token(
    path: &str,
    token: &Toml,
    views: Option<&[ViewDef]>,
    problems: &mut Vec<Problem>,
) -> Option<TokenDef> {
    let mut section = Section::new(path.to_owned(), Some(token), problems)?;
    let name = section.string("name", problems);
    let sha256 = section.string("sha256", problems).and_then(|hex| {
        let parsed = parse_sha256(&hex.to_ascii_lowercase());
        if parsed.is_none() {
            problem(
                problems,
                format!("{path}.sha256"),
                "must be the token's SHA-256 as 64 hex digits (never the token itself)",
            );
        }
        parsed
    });
    let scopes = match section.get("scopes") {
        Some(Toml::Array(names)) if !names.is_empty() => {
            let parsed: Option<Vec<Scope>> = names
                .iter()
                .map(|n| n.as_str().and_then(Scope::parse))
                .collect();
            if parsed.is_none() {
                problem(
                    problems,
                    format!("{path}.scopes"),
                    "must list read, ingest or admin",
                );
            }
            parsed
        }
        _ => {
            problem(
                problems,
                format!("{path}.scopes"),
                "must be a non-empty list of read, ingest or admin",
            );
            None
        }
    };
    let rate = match section.get("max_requests_per_s") {
        None => Some(None),
        Some(Toml::Integer(n)) if (1..=1_000_000).contains(n) => Some(Some(*n as u32)),
        Some(_) => {
            problem(
                problems,
                format!("{path}.max_requests_per_s"),
                "must be a whole number of requests per second, from 1",
            );
            None
        }
    };
    let filters = match section.get("row_filter") {
        None => Some(Vec::new()),
        Some(Toml::Table(filters)) => row_filters(path, filters, views, problems),
        Some(_) => {
            problem(
                problems,
                format!("{path}.row_filter"),
                "must be a table of view = \"SQL over its dimensions\"",
            );
            None
        }
    };
    section.finish(problems);
    Some(TokenDef {
        name: name?,
        sha256: sha256?,
        scopes: scopes?,
        row_filters: filters?,
        max_requests_per_s: rate?,
    })
}

fn row_filters(
    path: &str,
    filters: &Table,
    views: Option<&[ViewDef]>,
    problems: &mut Vec<Problem>,
) -> Option<Vec<RowFilter>> {
    let views = views?;
    let mut out = Vec::new();
    let mut ok = true;
    for (view_name, sql) in filters {
        let key = format!("{path}.row_filter.{view_name}");
        let Some(view) = views.iter().find(|v| &v.name == view_name) else {
            let names: Vec<&str> = views.iter().map(|v| v.name.as_str()).collect();
            problem(
                problems,
                key,
                format!(
                    "no view {view_name:?} (the views are: {})",
                    names.join(", ")
                ),
            );
            ok = false;
            continue;
        };
        let Some(sql) = sql.as_str() else {
            problem(
                problems,
                key,
                "must be SQL over the view's dimensions, as a string",
            );
            ok = false;
            continue;
        };
        let states = view.state_schema();
        let dimensions: Vec<Field> = (view.dimensions.iter())
            .filter_map(|d| states.field_with_name(&d.name).ok().cloned())
            .collect();
        let row = format!("a row of {view_name}, over its dimensions ({})", {
            let names: Vec<&str> = view.dimensions.iter().map(|d| d.name.as_str()).collect();
            names.join(", ")
        });
        match plan_filter(sql, &Schema::new(dimensions), &row) {
            Ok(expr) => out.push(RowFilter {
                view: view_name.clone(),
                sql: sql.to_owned(),
                expr,
            }),
            Err(message) => {
                problem(problems, key, message);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}
