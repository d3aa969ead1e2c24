//! `Limits::clamp`, the one place the "a request may lower a limit, never raise it" rule
//! lives, over arbitrary ceilings and requests.
//!
//! What must hold: no field of the result exceeds its ceiling; a field not asked for is the
//! ceiling; a value asked for between the floor and the ceiling is kept exactly; no field
//! falls below min(floor, ceiling); clamping is idempotent. (The frontend's conversion of
//! the JSON `timeout_s`/`limits` numbers into a `LimitRequest` is private to its `jobs`
//! module and is not fuzzed here: it rounds up and saturates, and whatever it produces goes
//! through this clamp in the executor.)

#![no_main]

use libfuzzer_sys::arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use nox_protocol::{LimitRequest, Limits};

/// Floors from `Limits::clamp`: timeout, cpu, memory, processes, file size, files, output.
const FLOORS: [u64; 7] = [1, 1, 32 * 1024 * 1024, 1, 0, 16, 0];

fn fields(limits: &Limits) -> [u64; 7] {
    [
        limits.timeout_ms,
        limits.cpu_seconds,
        limits.memory_bytes,
        limits.max_processes,
        limits.max_file_bytes,
        limits.max_open_files,
        limits.max_output_bytes,
    ]
}

fn asked(request: &LimitRequest) -> [Option<u64>; 7] {
    [
        request.timeout_ms,
        request.cpu_seconds,
        request.memory_bytes,
        request.max_processes,
        request.max_file_bytes,
        request.max_open_files,
        request.max_output_bytes,
    ]
}

fn request_of(values: [Option<u64>; 7]) -> LimitRequest {
    LimitRequest {
        timeout_ms: values[0],
        cpu_seconds: values[1],
        memory_bytes: values[2],
        max_processes: values[3],
        max_file_bytes: values[4],
        max_open_files: values[5],
        max_output_bytes: values[6],
    }
}

fn limits_of(values: [u64; 7]) -> Limits {
    Limits {
        timeout_ms: values[0],
        cpu_seconds: values[1],
        memory_bytes: values[2],
        max_processes: values[3],
        max_file_bytes: values[4],
        max_open_files: values[5],
        max_output_bytes: values[6],
    }
}

fn interesting(u: &mut Unstructured<'_>) -> libfuzzer_sys::arbitrary::Result<u64> {
    // Mostly arbitrary, sometimes the edges (0, 1, the floors, u64::MAX).
    Ok(match u8::arbitrary(u)? % 8 {
        0 => 0,
        1 => u64::MAX,
        2 => FLOORS[usize::from(u8::arbitrary(u)?) % FLOORS.len()],
        3 => FLOORS[usize::from(u8::arbitrary(u)?) % FLOORS.len()].saturating_sub(1),
        _ => u64::arbitrary(u)?,
    })
}

fn check(ceiling_values: [u64; 7], asked_values: [Option<u64>; 7]) {
    let ceiling = limits_of(ceiling_values);
    let request = request_of(asked_values);
    let got = ceiling.clamp(&request);
    let got_values = fields(&got);
    for index in 0..7 {
        let (value, cap, floor) = (got_values[index], ceiling_values[index], FLOORS[index]);
        assert!(
            value <= cap,
            "field {index}: {value} above the ceiling {cap}"
        );
        assert!(
            value >= floor.min(cap),
            "field {index}: {value} below the floor"
        );
        match asked_values[index] {
            None => assert_eq!(value, cap, "field {index}: not asked, not the ceiling"),
            Some(wanted) if wanted <= cap && wanted >= floor => {
                assert_eq!(value, wanted, "field {index}: a valid request was changed");
            }
            Some(_) => {}
        }
    }
    let again = ceiling.clamp(&request_of(got_values.map(Some)));
    assert_eq!(again, got, "clamp is not idempotent");
    assert_eq!(asked(&request), asked_values);
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let mut ceiling = [0u64; 7];
    let mut wanted = [None; 7];
    for index in 0..7 {
        let Ok(value) = interesting(&mut u) else {
            return;
        };
        ceiling[index] = value;
    }
    for slot in &mut wanted {
        let Ok(present) = bool::arbitrary(&mut u) else {
            return;
        };
        if present {
            let Ok(value) = interesting(&mut u) else {
                return;
            };
            *slot = Some(value);
        }
    }
    check(ceiling, wanted);
    // The shipped defaults are a ceiling too.
    check(fields(&Limits::default()), wanted);
});
