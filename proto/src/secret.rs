//! The one redaction rule for secrets in logs and status: publish keys, destination
//! publish keys, destination stream keys, access tokens.

/// A secret shown as at most its first 4 characters: enough to tell two keys apart in a
/// log, useless to an attacker. Secrets shorter than 12 characters show nothing.
pub fn redact(secret: &str) -> String {
    if secret.chars().count() >= 12 {
        let head: String = secret.chars().take(4).collect();
        format!("{head}…")
    } else {
        "…".to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn shows_at_most_four_characters() {
        assert_eq!(redact("abcd-efgh-ijkl"), "abcd…");
        assert_eq!(redact("abcdefghijk"), "…");
        assert_eq!(redact(""), "…");
        // Characters, not bytes: never splits a code point.
        assert_eq!(redact("ééééééééééééé"), "éééé…");
    }
}
