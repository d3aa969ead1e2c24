//! Names and paths that cross the wire. The frontend rejects bad ones early; the executor
//! validates again and then opens beneath the workspace with `openat2`, which is the
//! authority (a name that passes here can still be a symlink planted by a job).

use thiserror::Error;

/// Longest relative path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 1024;
/// Longest single component, in bytes (the kernel's `NAME_MAX`).
pub const MAX_COMPONENT_LEN: usize = 255;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("path must be relative to the workspace")]
    Absolute,
    #[error("path must not contain '..'")]
    ParentComponent,
    #[error("path must not contain NUL or control characters")]
    ControlCharacter,
    #[error("path must not contain a backslash")]
    Backslash,
    #[error("a path component is longer than {MAX_COMPONENT_LEN} bytes")]
    ComponentTooLong,
}

/// A validated relative path: no empty, `.` or `..` components, no leading `/`, no NUL or
/// control characters, no backslash. Stored normalised (`a//./b/` becomes `a/b`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath {
    normalised: String,
}

impl RelPath {
    /// Validate `raw` (already percent-decoded).
    pub fn parse(raw: &str) -> Result<RelPath, PathError> {
        if raw.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong);
        }
        if raw.chars().any(char::is_control) {
            return Err(PathError::ControlCharacter);
        }
        if raw.contains('\\') {
            return Err(PathError::Backslash);
        }
        if raw.starts_with('/') {
            return Err(PathError::Absolute);
        }
        let mut parts = Vec::new();
        for component in raw.split('/') {
            match component {
                "" | "." => {}
                ".." => return Err(PathError::ParentComponent),
                name if name.len() > MAX_COMPONENT_LEN => {
                    return Err(PathError::ComponentTooLong);
                }
                name => parts.push(name),
            }
        }
        if parts.is_empty() {
            return Err(PathError::Empty);
        }
        Ok(RelPath {
            normalised: parts.join("/"),
        })
    }

    /// Like [`RelPath::parse`], but an empty path (the workspace itself) is allowed.
    pub fn parse_prefix(raw: &str) -> Result<Option<RelPath>, PathError> {
        match RelPath::parse(raw) {
            Err(PathError::Empty) => Ok(None),
            other => other.map(Some),
        }
    }

    /// The normalised path, `a/b/c`.
    pub fn as_str(&self) -> &str {
        &self.normalised
    }

    /// Components, first to last.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.normalised.split('/')
    }

    /// The parent directory (`None` at top level) and the final name.
    pub fn split_last(&self) -> (Option<&str>, &str) {
        match self.normalised.rsplit_once('/') {
            Some((parent, name)) => (Some(parent), name),
            None => (None, &self.normalised),
        }
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.normalised)
    }
}

/// Workspace names become a directory name under the state directory: 1–64 of
/// `[A-Za-z0-9_-]`, not starting with `-`.
pub fn validate_workspace_name(name: &str) -> bool {
    is_simple_token(name, 64) && !name.starts_with('-')
}

/// Job ids appear in logs and in a per-job directory name: 1–64 of `[A-Za-z0-9_-]`.
pub fn validate_job_id(id: &str) -> bool {
    is_simple_token(id, 64)
}

fn is_simple_token(value: &str, max_len: usize) -> bool {
    !value.is_empty()
        && value.len() <= max_len
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_are_accepted_and_normalised() {
        assert_eq!(RelPath::parse("a.txt").unwrap().as_str(), "a.txt");
        assert_eq!(RelPath::parse("d/./e//f/").unwrap().as_str(), "d/e/f");
        assert_eq!(
            RelPath::parse("dir/sub/f.py").unwrap().split_last(),
            (Some("dir/sub"), "f.py")
        );
        assert_eq!(RelPath::parse("...").unwrap().as_str(), "...");
        assert_eq!(RelPath::parse("..a").unwrap().as_str(), "..a");
    }

    #[test]
    fn traversal_absolute_and_control_characters_are_refused() {
        assert_eq!(RelPath::parse(""), Err(PathError::Empty));
        assert_eq!(RelPath::parse("./"), Err(PathError::Empty));
        assert_eq!(RelPath::parse("/etc/passwd"), Err(PathError::Absolute));
        assert_eq!(RelPath::parse("../x"), Err(PathError::ParentComponent));
        assert_eq!(RelPath::parse("a/../../x"), Err(PathError::ParentComponent));
        assert_eq!(RelPath::parse("a\0b"), Err(PathError::ControlCharacter));
        assert_eq!(RelPath::parse("a\nb"), Err(PathError::ControlCharacter));
        assert_eq!(RelPath::parse("..\\x"), Err(PathError::Backslash));
        assert_eq!(
            RelPath::parse(&"a".repeat(300)),
            Err(PathError::ComponentTooLong)
        );
        assert_eq!(RelPath::parse(&"a/".repeat(600)), Err(PathError::TooLong));
    }

    #[test]
    fn an_empty_prefix_means_the_whole_workspace() {
        assert_eq!(RelPath::parse_prefix(""), Ok(None));
        assert!(RelPath::parse_prefix("..").is_err());
    }

    #[test]
    fn workspace_names_and_job_ids_are_simple_tokens() {
        assert!(validate_workspace_name("default"));
        assert!(validate_workspace_name("team_a-1"));
        assert!(!validate_workspace_name(""));
        assert!(!validate_workspace_name("-x"));
        assert!(!validate_workspace_name("a/b"));
        assert!(!validate_workspace_name(".."));
        assert!(!validate_workspace_name(&"a".repeat(65)));
        assert!(validate_job_id("3f9a0c1d2e4b5a69"));
        assert!(!validate_job_id("a b"));
    }
}
