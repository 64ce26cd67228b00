//! Bad flags and bad input: exit status 2, a message on stderr that names the flag or
//! the line, and the rows before a bad line still printed.

use crate::common::{HEADER, expected, simulate, tollgate};

const GCRA: [&str; 6] = ["--algorithm", "gcra", "--limit", "2", "--period", "1s"];

/// Runs a trace that must fail; checks status 2 and that the first line of stderr
/// is `first_line`; returns (stdout, stderr).
fn fails(flags: &[&str], trace: &str, first_line: &str) -> (String, String) {
    let run = simulate(flags, trace);
    assert_eq!(run.status, 2, "{run:?}");
    assert_eq!(run.stderr.lines().next(), Some(first_line), "{run:?}");
    (run.stdout, run.stderr)
}

/// A bad trace after two good rows: the good rows are printed, then the error.
fn fails_on_line_4(bad_row: &str, first_line: &str) -> String {
    let trace = format!("time_ms,key,cost\n0,a,1\n0,b,1\n{bad_row}\n0,c,1\n");
    let (stdout, stderr) = fails(&GCRA, &trace, first_line);
    assert_eq!(
        stdout,
        expected(&["0,a,1,true,1,,0", "0,b,1,true,1,,0"]),
        "rows before the bad line are printed"
    );
    stderr
}

#[test]
fn a_cost_that_is_not_a_number() {
    fails_on_line_4(
        "5,a,abc",
        "error: line 4: invalid cost \"abc\": expected a whole number >= 1",
    );
}

#[test]
fn a_zero_or_negative_cost() {
    fails_on_line_4(
        "5,a,0",
        "error: line 4: invalid cost \"0\": expected a whole number >= 1",
    );
    fails_on_line_4(
        "5,a,-2",
        "error: line 4: invalid cost \"-2\": expected a whole number >= 1",
    );
}

#[test]
fn a_cost_too_large() {
    fails_on_line_4(
        "5,a,4294967296",
        "error: line 4: invalid cost \"4294967296\": expected a whole number from 1 to 4294967295",
    );
}

#[test]
fn a_cost_with_spaces_gets_a_hint() {
    let stderr = fails_on_line_4(
        "5,a, 1",
        "error: line 4: invalid cost \" 1\": expected a whole number >= 1",
    );
    assert!(
        stderr.contains("hint: remove the spaces around the number"),
        "{stderr}"
    );
}

#[test]
fn a_time_that_is_not_a_number() {
    fails_on_line_4(
        "soon,a,1",
        "error: line 4: invalid time_ms \"soon\": expected a whole number of milliseconds >= 0",
    );
    fails_on_line_4(
        "-5,a,1",
        "error: line 4: invalid time_ms \"-5\": expected a whole number of milliseconds >= 0",
    );
    fails_on_line_4(
        "1.5,a,1",
        "error: line 4: invalid time_ms \"1.5\": expected a whole number of milliseconds >= 0",
    );
}

#[test]
fn a_time_too_late() {
    fails_on_line_4(
        "4611686018428,a,1",
        "error: line 4: invalid time_ms \"4611686018428\": the latest time is 4611686018427 (about 146 years)",
    );
}

#[test]
fn times_going_backwards_name_both_times() {
    let trace = "time_ms,key,cost\n0,a,1\n1000,b,1\n\n999,a,1\n";
    let (stdout, stderr) = fails(
        &GCRA,
        trace,
        "error: line 5: time_ms 999 is earlier than time_ms 1000 on line 3: times must not go backwards",
    );
    assert_eq!(stdout, expected(&["0,a,1,true,1,,0", "1000,b,1,true,1,,0"]));
    assert!(
        stderr.contains("hint: sort the trace by time_ms"),
        "{stderr}"
    );
}

#[test]
fn a_missing_column() {
    fails_on_line_4(
        "5,a",
        "error: line 4: missing column: expected 3 columns (time_ms,key,cost), found 2: \"5,a\"",
    );
}

#[test]
fn too_many_columns() {
    let stderr = fails_on_line_4(
        "5,a,b,1",
        "error: line 4: too many columns: expected 3 columns (time_ms,key,cost), found 4: \"5,a,b,1\"",
    );
    assert!(
        stderr.contains("hint: quote a key that holds a comma"),
        "{stderr}"
    );
}

#[test]
fn an_unclosed_quote() {
    let trace = "time_ms,key,cost\n0,a,1\n0,\"b,1\n1,c,1\n";
    let (stdout, _) = fails(
        &GCRA,
        trace,
        "error: line 3: a quoted field is never closed",
    );
    assert_eq!(stdout, expected(&["0,a,1,true,1,,0"]));
}

/// The line named is where the bad row starts, after blank lines, CRLF line ends and
/// a quoted key over two lines; the last row needs no line break.
#[test]
fn the_line_named_is_where_the_bad_row_starts() {
    let trace = "time_ms,key,cost\r\n0,\"two\r\nlines\",1\r\n\r\n\r\n5,a,abc";
    let (stdout, _) = fails(
        &GCRA,
        trace,
        "error: line 6: invalid cost \"abc\": expected a whole number >= 1",
    );
    assert_eq!(stdout, expected(&["0,\"two\r\nlines\",1,true,1,,0"]));
    fails(
        &GCRA,
        "time_ms,key,cost\n\n0,\"a\n\nb,1",
        "error: line 3: a quoted field is never closed",
    );
}

#[test]
fn a_wrong_header() {
    let (stdout, stderr) = fails(
        &GCRA,
        "time,key,cost\n0,a,1\n",
        "error: line 1: invalid header \"time,key,cost\": expected \"time_ms,key,cost\"",
    );
    assert_eq!(
        stdout, "",
        "nothing is printed before the header is checked"
    );
    assert!(stderr.contains("hint: "), "{stderr}");
}

#[test]
fn a_missing_header() {
    let (_, stderr) = fails(
        &GCRA,
        "0,a,1\n",
        "error: line 1: invalid header \"0,a,1\": expected \"time_ms,key,cost\"",
    );
    assert!(stderr.contains("looks like a data row"), "{stderr}");
}

#[test]
fn a_header_in_another_order() {
    let (_, stderr) = fails(
        &GCRA,
        "key,time_ms,cost\n",
        "error: line 1: invalid header \"key,time_ms,cost\": expected \"time_ms,key,cost\"",
    );
    assert!(stderr.contains("in the order time_ms,key,cost"), "{stderr}");
}

#[test]
fn an_empty_input() {
    fails(
        &GCRA,
        "",
        "error: line 1: the input is empty: expected the header time_ms,key,cost",
    );
}

#[test]
fn an_unknown_algorithm() {
    let (stdout, _) = fails(
        &["--algorithm", "foo", "--limit", "2", "--period", "1s"],
        "time_ms,key,cost\n",
        "error: --algorithm \"foo\": unknown algorithm: expected fixed_window, sliding_window_log, sliding_window_counter, token_bucket, gcra or leaky_bucket",
    );
    assert_eq!(stdout, "");
}

#[test]
fn a_near_miss_algorithm_gets_a_suggestion() {
    let (_, stderr) = fails(
        &[
            "--algorithm",
            "token-bucket",
            "--limit",
            "2",
            "--period",
            "1s",
        ],
        "time_ms,key,cost\n",
        "error: --algorithm \"token-bucket\": unknown algorithm: expected fixed_window, sliding_window_log, sliding_window_counter, token_bucket, gcra or leaky_bucket",
    );
    assert!(
        stderr.contains("hint: did you mean \"token_bucket\"?"),
        "{stderr}"
    );
}

#[test]
fn a_zero_limit() {
    fails(
        &["--algorithm", "gcra", "--limit", "0", "--period", "1s"],
        "time_ms,key,cost\n",
        "error: --limit 0: a policy must admit at least 1 unit per period",
    );
}

#[test]
fn a_limit_that_is_not_a_number() {
    fails(
        &["--algorithm", "gcra", "--limit", "ten", "--period", "1s"],
        "time_ms,key,cost\n",
        "error: --limit \"ten\": expected a whole number >= 1",
    );
    fails(
        &["--algorithm", "gcra", "--limit", "-1", "--period", "1s"],
        "time_ms,key,cost\n",
        "error: --limit \"-1\": expected a whole number >= 1",
    );
}

#[test]
fn an_invalid_period() {
    let (_, stderr) = fails(
        &["--algorithm", "gcra", "--limit", "1", "--period", "15"],
        "time_ms,key,cost\n",
        "error: --period \"15\": invalid duration: expected a whole number followed by a unit: ms, s, m or h (also ns, us, d), e.g. 500ms, 15s, 1m",
    );
    assert!(
        stderr.contains("hint: add a unit, e.g. \"15s\" or \"15ms\""),
        "{stderr}"
    );
    let (_, stderr) = fails(
        &["--algorithm", "gcra", "--limit", "1", "--period", "15 sec"],
        "time_ms,key,cost\n",
        "error: --period \"15 sec\": invalid duration: expected a whole number followed by a unit: ms, s, m or h (also ns, us, d), e.g. 500ms, 15s, 1m",
    );
    assert!(stderr.contains("hint: did you mean \"15s\"?"), "{stderr}");
}

#[test]
fn a_zero_or_huge_period() {
    fails(
        &["--algorithm", "gcra", "--limit", "1", "--period", "0s"],
        "time_ms,key,cost\n",
        "error: --period \"0s\": the period must be longer than zero",
    );
    fails(
        &["--algorithm", "gcra", "--limit", "1", "--period", "100000d"],
        "time_ms,key,cost\n",
        "error: --period \"100000d\": too long: the longest period is 2^62 ns (about 146 years)",
    );
}

#[test]
fn a_zero_burst() {
    fails(
        &[
            "--algorithm",
            "token_bucket",
            "--limit",
            "1",
            "--period",
            "1s",
            "--burst",
            "0",
        ],
        "time_ms,key,cost\n",
        "error: --burst 0: the burst must be at least 1",
    );
}

#[test]
fn an_input_file_that_does_not_exist() {
    let mut flags = GCRA.to_vec();
    flags.extend(["--input", "/nonexistent/trace.csv"]);
    fails(
        &flags,
        "",
        "error: --input \"/nonexistent/trace.csv\": no such file or directory (os error 2)",
    );
}

#[test]
fn a_directory_as_input() {
    let mut flags = GCRA.to_vec();
    flags.extend(["--input", "/"]);
    fails(
        &flags,
        "",
        "error: --input \"/\": is a directory: expected a CSV file",
    );
}

#[test]
fn a_missing_flag_is_a_usage_error() {
    let run = tollgate(&["simulate", "--algorithm", "gcra", "--limit", "1"], "");
    assert_eq!(run.status, 2, "{run:?}");
    assert!(run.stderr.contains("--period"), "{run:?}");
}

#[test]
fn the_error_comes_after_the_flushed_rows_only() {
    // Many good rows, then a bad one: every good row reaches stdout.
    let mut trace = String::from("time_ms,key,cost\n");
    for i in 0..5000 {
        trace.push_str(&format!("{i},k,1\n"));
    }
    trace.push_str("5000,k,x\n");
    let run = simulate(&GCRA, &trace);
    assert_eq!(run.status, 2, "{run:?}");
    assert_eq!(run.stdout.lines().count(), 5001);
    assert!(run.stdout.starts_with(HEADER));
    assert!(
        run.stderr
            .starts_with("error: line 5002: invalid cost \"x\""),
        "{}",
        run.stderr
    );
}
