//! Arbitrary strings through the path validation both daemons share (`RelPath::parse`,
//! `parse_prefix`) and the frontend's public request decoders (`nox_frontend::uri`:
//! `percent_decode`, `file_path` for `/files/{path}`, `query_param` for `?path=` and
//! `?prefix=`). The route matcher (`routes::Route::of`) is private to the frontend and not
//! fuzzed here; it is an exact string match on the decoded-once URI path.
//!
//! What must hold for every accepted path: relative, no empty, `.` or `..` component, no
//! control character or backslash, within the length limits, and a fixed point of `parse`
//! (the executor re-parses what the frontend sends). Whatever the encoding, a raw input
//! with a `..` component, after decoding, is never accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use nox_frontend::uri::{UriError, file_path, percent_decode, query_param};
use nox_protocol::path::{MAX_COMPONENT_LEN, MAX_PATH_LEN};
use nox_protocol::{PathError, RelPath};

fn check_accepted(path: &RelPath) {
    let text = path.as_str();
    assert!(!text.is_empty(), "an accepted path is empty");
    assert!(!text.starts_with('/'), "{text:?} is absolute");
    assert!(text.len() <= MAX_PATH_LEN, "{text:?} is too long");
    assert!(!text.contains('\\'), "{text:?} has a backslash");
    assert!(
        !text.chars().any(char::is_control),
        "{text:?} has a control character"
    );
    for component in path.components() {
        assert!(
            !matches!(component, "" | "." | ".."),
            "{text:?} has the component {component:?}"
        );
        assert!(
            component.len() <= MAX_COMPONENT_LEN,
            "{text:?}: long component"
        );
    }
    assert_eq!(
        RelPath::parse(text).as_ref(),
        Ok(path),
        "parse is not a fixed point"
    );
    let (parent, name) = path.split_last();
    let rebuilt = match parent {
        Some(parent) => format!("{parent}/{name}"),
        None => name.to_owned(),
    };
    assert_eq!(rebuilt, text, "split_last does not rebuild the path");
}

fn check_raw(raw: &str) {
    let parsed = RelPath::parse(raw);
    if let Ok(path) = &parsed {
        check_accepted(path);
    }
    if raw.split('/').any(|component| component == "..") {
        assert!(
            parsed.is_err(),
            "{raw:?} has a `..` component and was accepted"
        );
    }
    match RelPath::parse_prefix(raw) {
        Ok(Some(path)) => check_accepted(&path),
        Ok(None) => assert_eq!(parsed, Err(PathError::Empty)),
        Err(error) => assert_eq!(parsed, Err(error)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    check_raw(raw);

    // `/files/{path}`: decoded once, then validated as a whole.
    let decoded = percent_decode(raw, false);
    match (file_path(raw), &decoded) {
        (Ok(path), Ok(text)) => {
            check_accepted(&path);
            assert_eq!(RelPath::parse(text).as_ref(), Ok(&path));
        }
        (Ok(path), Err(error)) => panic!("{raw:?} accepted as {path} but decoding failed: {error}"),
        (Err(UriError::Path(error)), Ok(text)) => {
            assert_eq!(RelPath::parse(text), Err(error));
        }
        (Err(_), _) => {}
    }
    if let Ok(text) = &decoded {
        check_raw(text);
    }

    // `?path=` / `?prefix=` values: form rules, the last value wins.
    for name in ["path", "prefix"] {
        if let Ok(Some(value)) = query_param(Some(raw), name) {
            check_raw(&value);
        }
    }
});
