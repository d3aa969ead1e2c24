//! Percent-decoding of request paths and queries, before `RelPath` validation.
//!
//! Decoding happens exactly once, here; the decoded text is then validated as a whole, so an
//! encoded separator or dot (`..%2Fetc`, `%2e%2e/x`, `%2Fetc%2Fpasswd`) is judged like the
//! plain form, and an encoded NUL is a control character like any other.

use nox_protocol::{PathError, RelPath};
use thiserror::Error;

/// Why a path or query value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UriError {
    #[error("invalid percent-escape")]
    BadEscape,
    #[error("not valid UTF-8 once decoded")]
    NotUtf8,
    #[error(transparent)]
    Path(#[from] PathError),
}

/// Decode `%XX` escapes; with `plus_is_space` (query strings, form-urlencoded) `+` is a space.
pub fn percent_decode(input: &str, plus_is_space: bool) -> Result<String, UriError> {
    let bytes = input.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while let Some(&byte) = bytes.get(index) {
        match byte {
            b'%' => {
                let high = bytes.get(index + 1).and_then(|&b| hex_value(b));
                let low = bytes.get(index + 2).and_then(|&b| hex_value(b));
                let (Some(high), Some(low)) = (high, low) else {
                    return Err(UriError::BadEscape);
                };
                decoded.push(high << 4 | low);
                index += 3;
            }
            b'+' if plus_is_space => {
                decoded.push(b' ');
                index += 1;
            }
            other => {
                decoded.push(other);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).map_err(|_| UriError::NotUtf8)
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The value of query parameter `name` (the last one if repeated, as the seed's framework
/// did), decoded with form-urlencoded rules.
pub fn query_param(query: Option<&str>, name: &str) -> Result<Option<String>, UriError> {
    let mut found = None;
    for pair in query
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(key, true)? == name {
            found = Some(percent_decode(value, true)?);
        }
    }
    Ok(found)
}

/// The path after `/files/`, percent-decoded (a decoded `/` separates components) and
/// validated as a relative path inside the workspace.
pub fn file_path(encoded: &str) -> Result<RelPath, UriError> {
    let decoded = percent_decode(encoded, false)?;
    Ok(RelPath::parse(&decoded)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_encoded_paths_decode_to_the_same_relative_path() {
        assert_eq!(file_path("dir/a.txt").unwrap().as_str(), "dir/a.txt");
        assert_eq!(file_path("dir%2Fa.txt").unwrap().as_str(), "dir/a.txt");
        assert_eq!(
            file_path("my%20file+1.txt").unwrap().as_str(),
            "my file+1.txt"
        );
        assert_eq!(file_path("%C3%A9t%C3%A9").unwrap().as_str(), "été");
    }

    #[test]
    fn every_encoded_traversal_form_is_refused() {
        let refused = [
            ("%2e%2e/x", UriError::Path(PathError::ParentComponent)),
            ("%2E%2E%2Fx", UriError::Path(PathError::ParentComponent)),
            ("..%2Fetc", UriError::Path(PathError::ParentComponent)),
            ("../etc/passwd", UriError::Path(PathError::ParentComponent)),
            (
                "a/%2e%2e/%2e%2e/b",
                UriError::Path(PathError::ParentComponent),
            ),
            ("%2Fetc%2Fpasswd", UriError::Path(PathError::Absolute)),
            ("/etc/passwd", UriError::Path(PathError::Absolute)),
            ("a%00b", UriError::Path(PathError::ControlCharacter)),
            ("a%0Ab", UriError::Path(PathError::ControlCharacter)),
            ("..%5Cx", UriError::Path(PathError::Backslash)),
            ("", UriError::Path(PathError::Empty)),
            ("%2e", UriError::Path(PathError::Empty)),
            ("a%zz", UriError::BadEscape),
            ("a%2", UriError::BadEscape),
            ("%ff%fe", UriError::NotUtf8),
        ];
        for (encoded, expected) in refused {
            assert_eq!(file_path(encoded), Err(expected), "{encoded}");
        }
    }

    #[test]
    fn query_values_use_form_rules_and_the_last_value_wins() {
        assert_eq!(
            query_param(Some("path=a+b%2Fc.txt"), "path")
                .unwrap()
                .as_deref(),
            Some("a b/c.txt")
        );
        assert_eq!(
            query_param(Some("x=1&path=a&path=b"), "path")
                .unwrap()
                .as_deref(),
            Some("b")
        );
        assert_eq!(query_param(Some("pat=a"), "path").unwrap(), None);
        assert_eq!(query_param(None, "path").unwrap(), None);
        assert_eq!(
            query_param(Some("path"), "path").unwrap().as_deref(),
            Some("")
        );
        assert_eq!(
            query_param(Some("path=%"), "path"),
            Err(UriError::BadEscape)
        );
    }
}
