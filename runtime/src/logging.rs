//! Logging through `tracing`: plain text (or JSON with `PUSHCAST_LOG_FORMAT=json`) to
//! stderr, filtered by `RUST_LOG` (default `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("PUSHCAST_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Shows the first 4 characters of a secret and hides the rest, so logs can tell keys
/// apart without revealing them.
pub fn redact(secret: &str) -> String {
    let shown: String = secret.chars().take(4).collect();
    if secret.chars().count() <= 4 {
        "***".to_string()
    } else {
        format!("{shown}***")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redacts() {
        assert_eq!(super::redact("abcdefgh"), "abcd***");
        assert_eq!(super::redact("abc"), "***");
    }
}
