//! Bearer-token authentication. Every configured token is compared with the presented one in
//! constant time, with no early exit across tokens, so the time taken says nothing about
//! which token (or how much of one) matched. The matching token picks the workspace.
//! Tokens are never logged, echoed or put into an error message.

use std::fmt;

use http::HeaderMap;
use http::header::AUTHORIZATION;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::api_error::ApiError;

/// The configured tokens and their workspaces.
pub struct Tokens {
    entries: Vec<(Vec<u8>, String)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// `(token, workspace)` pairs, already validated (non-empty, unique).
    pub fn new(entries: Vec<(Vec<u8>, String)>) -> Self {
        Tokens { entries }
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is configured (never true after validation).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Workspaces whose token is shorter than `min_len` bytes (for a warning at start).
    pub fn short_token_workspaces(&self, min_len: usize) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(token, _)| token.len() < min_len)
            .map(|(_, workspace)| workspace.as_str())
            .collect()
    }

    /// The workspace of `presented`, comparing against every token in constant time.
    pub fn workspace_for(&self, presented: &[u8]) -> Option<&str> {
        let mut found = Choice::from(0);
        let mut index = 0u64;
        for (position, (token, _)) in self.entries.iter().enumerate() {
            let matches = token.as_slice().ct_eq(presented);
            index.conditional_assign(&(position as u64), matches);
            found |= matches;
        }
        if bool::from(found) {
            usize::try_from(index)
                .ok()
                .and_then(|index| self.entries.get(index))
                .map(|(_, workspace)| workspace.as_str())
        } else {
            None
        }
    }

    /// The workspace of the request's `Authorization: Bearer` token, or 401.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&str, ApiError> {
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(ApiError::unauthorized());
        };
        bearer_token(value.as_bytes())
            .and_then(|token| self.workspace_for(token))
            .ok_or_else(ApiError::unauthorized)
    }
}

/// The token of an `Authorization` value: scheme `Bearer` in any case, one or more spaces,
/// then a non-empty token without spaces.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let split = value.iter().position(|&b| b == b' ' || b == b'\t')?;
    let (scheme, rest) = value.split_at(split);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ' && b != b'\t')?;
    let token = rest.get(start..)?;
    let end = token
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |last| last + 1);
    let token = token.get(..end)?;
    if token.is_empty() || token.iter().any(|&b| b == b' ' || b == b'\t') {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(vec![
            (b"alpha-token-0123456789".to_vec(), "default".into()),
            (b"beta-token-0123456789".to_vec(), "team_b".into()),
        ])
    }

    #[test]
    fn the_scheme_is_case_insensitive_and_spaces_may_repeat() {
        assert_eq!(bearer_token(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"BEARER    abc"), Some(&b"abc"[..]));
        assert_eq!(bearer_token(b"Bearer abc  "), Some(&b"abc"[..]));
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_refused() {
        assert_eq!(bearer_token(b"Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(bearer_token(b"Token abc"), None);
        assert_eq!(bearer_token(b"Bearer"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearer    "), None);
        assert_eq!(bearer_token(b""), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"Bearer a b"), None);
    }

    #[test]
    fn the_matching_token_picks_the_workspace() {
        let tokens = tokens();
        assert_eq!(
            tokens.workspace_for(b"alpha-token-0123456789"),
            Some("default")
        );
        assert_eq!(
            tokens.workspace_for(b"beta-token-0123456789"),
            Some("team_b")
        );
        assert_eq!(tokens.workspace_for(b"beta-token-012345678"), None);
        assert_eq!(tokens.workspace_for(b""), None);
    }

    #[test]
    fn a_request_without_a_valid_header_gets_401_with_www_authenticate() {
        let tokens = tokens();
        let mut headers = HeaderMap::new();
        assert_eq!(tokens.authenticate(&headers).unwrap_err().status(), 401);
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Bearer wrong"));
        let error = tokens.authenticate(&headers).unwrap_err();
        assert_eq!(error.status(), 401);
        let response = error.into_response();
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        headers.insert(
            AUTHORIZATION,
            HeaderValue::from_static("bearer  beta-token-0123456789"),
        );
        assert_eq!(tokens.authenticate(&headers).unwrap(), "team_b");
        headers.append(
            AUTHORIZATION,
            HeaderValue::from_static("Bearer beta-token-0123456789"),
        );
        assert!(tokens.authenticate(&headers).is_err());
    }
}
