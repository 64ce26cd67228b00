//! `tollgate simulate` on small traces whose every output row is worked out by hand
//! from ALGORITHMS.md (the arithmetic is in the comments, times in milliseconds).

use std::io::Read;
use std::process::Stdio;

use crate::common::{HEADER, command, expected, scratch_file, simulate, simulate_ok};

/// gcra, 2 per 1s: T = 500, tau = B*T = 1000.
#[test]
fn gcra_two_per_second() {
    let trace = "time_ms,key,cost\n\
                 0,alice,1\n\
                 0,alice,1\n\
                 0,alice,1\n\
                 250,alice,1\n\
                 500,alice,1\n\
                 500,bob,2\n\
                 1000,bob,3\n\
                 2000,alice,2\n";
    let out = simulate_ok(
        &["--algorithm", "gcra", "--limit", "2", "--period", "1s"],
        trace,
    );
    assert_eq!(
        out,
        expected(&[
            // TAT 0 -> 500; remaining (1000 - 500) / 500 = 1
            "0,alice,1,true,1,,0",
            // TAT 500 -> 1000; remaining 0
            "0,alice,1,true,0,,0",
            // new_tat 1500, 1500 - 0 > 1000: retry 1500 - 1000 - 0 = 500
            "0,alice,1,false,0,500,0",
            // new_tat 1500, 1250 > 1000: retry 250
            "250,alice,1,false,0,250,0",
            // new_tat 1500, 1000 <= 1000: admitted, TAT 1500
            "500,alice,1,true,0,,0",
            // another key, fresh: TAT 500 -> 1500, ahead 1000
            "500,bob,2,true,0,,0",
            // 3 > B = 2: never admitted, no retry; remaining (1000 - 500) / 500 = 1
            "1000,bob,3,false,1,,0",
            // TAT 1500 < 2000: new_tat 3000, ahead 1000 <= 1000
            "2000,alice,2,true,0,,0",
        ])
    );
}

/// token_bucket, 2 per 1s, burst 3: one token every T = 500, a fresh bucket holds 3.
#[test]
fn token_bucket_with_burst() {
    let trace = "time_ms,key,cost\n\
                 0,k,1\n\
                 0,k,2\n\
                 100,k,1\n\
                 600,k,1\n\
                 1000,k,1\n\
                 1000,k,4\n\
                 5000,k,1\n";
    let out = simulate_ok(
        &[
            "--algorithm",
            "token_bucket",
            "--limit",
            "2",
            "--period",
            "1s",
            "--burst",
            "3",
        ],
        trace,
    );
    assert_eq!(
        out,
        expected(&[
            // 3 tokens -> 2
            "0,k,1,true,2,,0",
            // 2 -> 0
            "0,k,2,true,0,,0",
            // 0 + 100/500 = 0.2 tokens: retry (1 - 0.2) * 500 = 400
            "100,k,1,false,0,400,0",
            // 0.2 + 1.0 = 1.2 -> 0.2
            "600,k,1,true,0,,0",
            // 0.2 + 400/500 = 1.0 -> 0
            "1000,k,1,true,0,,0",
            // 4 > B = 3: never admitted
            "1000,k,4,false,0,,0",
            // full again: 3 -> 2
            "5000,k,1,true,2,,0",
        ])
    );
}

/// Without --burst the burst is the limit: the same trace with token_bucket 2 per 1s
/// admits 2 at once, not 3.
#[test]
fn burst_defaults_to_the_limit() {
    let trace = "time_ms,key,cost\n0,k,1\n0,k,1\n0,k,1\n";
    let out = simulate_ok(
        &[
            "--algorithm",
            "token_bucket",
            "--limit",
            "2",
            "--period",
            "1s",
        ],
        trace,
    );
    assert_eq!(
        out,
        expected(&["0,k,1,true,1,,0", "0,k,1,true,0,,0", "0,k,1,false,0,500,0"])
    );
}

/// 3 per 1s: T = ceil(1e9 / 3) ns = 333_333_334 ns. Durations are rounded up to the
/// millisecond: 333.333334 ms -> 334, 666.666668 ms -> 667.
#[test]
fn durations_round_up_to_the_millisecond() {
    let trace = "time_ms,key,cost\n0,a,1\n0,a,1\n0,a,1\n0,a,1\n";
    let flags = |algorithm| ["--algorithm", algorithm, "--limit", "3", "--period", "1s"];
    assert_eq!(
        simulate_ok(&flags("token_bucket"), trace),
        expected(&[
            "0,a,1,true,2,,0",
            "0,a,1,true,1,,0",
            "0,a,1,true,0,,0",
            // retry = T = 333.333334 ms
            "0,a,1,false,0,334,0",
        ])
    );
    assert_eq!(
        simulate_ok(&flags("leaky_bucket"), trace),
        expected(&[
            "0,a,1,true,2,,0",
            // delay T
            "0,a,1,true,1,,334",
            // delay 2T
            "0,a,1,true,0,,667",
            // wait 3T + T > 3T: retry T
            "0,a,1,false,0,334,0",
        ])
    );
}

/// leaky_bucket, 1 per 1s, burst 3: T = 1000, B*T = 3000. Admitted requests are
/// delayed so they leave 1000 apart.
#[test]
fn leaky_bucket_delays() {
    let trace = "time_ms,key,cost\n\
                 0,q,1\n\
                 0,q,1\n\
                 0,q,1\n\
                 0,q,1\n\
                 500,q,1\n\
                 1000,q,1\n\
                 1500,q,2\n\
                 10000,q,2\n";
    let out = simulate_ok(
        &[
            "--algorithm",
            "leaky_bucket",
            "--limit",
            "1",
            "--period",
            "1s",
            "--burst",
            "3",
        ],
        trace,
    );
    assert_eq!(
        out,
        expected(&[
            // wait 0; next_free 1000; remaining (3000 - 1000) / 1000 = 2
            "0,q,1,true,2,,0",
            // wait 1000; next_free 2000
            "0,q,1,true,1,,1000",
            // wait 2000; next_free 3000
            "0,q,1,true,0,,2000",
            // wait 3000 + 1000 > 3000: retry 1000
            "0,q,1,false,0,1000,0",
            // wait 2500 + 1000 > 3000: retry 500
            "500,q,1,false,0,500,0",
            // wait 2000 + 1000 <= 3000: admitted, delayed 2000; next_free 4000
            "1000,q,1,true,0,,2000",
            // wait 2500 + 2000 > 3000: retry 1500; remaining (3000 - 2500) / 1000 = 0
            "1500,q,2,false,0,1500,0",
            // drained: wait 0; next_free 12000; remaining 1
            "10000,q,2,true,1,,0",
        ])
    );
}

/// fixed_window, 2 per 1s: windows [0, 1000), [1000, 2000), ... Around the boundary
/// 3 requests pass within 600 ms (400, 1000, 1000): the known weakness.
#[test]
fn fixed_window_across_a_boundary() {
    let trace = "time_ms,key,cost\n\
                 0,a,1\n\
                 400,a,1\n\
                 999,a,1\n\
                 1000,a,1\n\
                 1000,a,1\n\
                 1001,a,1\n\
                 1500,a,3\n\
                 1500,b,2\n\
                 2500,b,1\n";
    let out = simulate_ok(
        &[
            "--algorithm",
            "fixed_window",
            "--limit",
            "2",
            "--period",
            "1s",
        ],
        trace,
    );
    assert_eq!(
        out,
        expected(&[
            "0,a,1,true,1,,0",
            "400,a,1,true,0,,0",
            // window 0 full: retry at its end, 1000 - 999 = 1
            "999,a,1,false,0,1,0",
            // window 1
            "1000,a,1,true,1,,0",
            "1000,a,1,true,0,,0",
            // retry 2000 - 1001 = 999
            "1001,a,1,false,0,999,0",
            // 3 > L = 2: never admitted
            "1500,a,3,false,0,,0",
            "1500,b,2,true,0,,0",
            // window 2
            "2500,b,1,true,1,,0",
        ])
    );
}

/// sliding_window_log, 2 per 1s: an entry is live at t iff ts > t - 1000.
#[test]
fn sliding_window_log() {
    let trace = "time_ms,key,cost\n\
                 0,a,1\n\
                 300,a,1\n\
                 600,a,1\n\
                 1000,a,1\n\
                 1200,a,2\n\
                 1300,a,1\n\
                 2300,a,2\n\
                 2300,a,3\n";
    let out = simulate_ok(
        &[
            "--algorithm",
            "sliding_window_log",
            "--limit",
            "2",
            "--period",
            "1s",
        ],
        trace,
    );
    assert_eq!(
        out,
        expected(&[
            "0,a,1,true,1,,0",
            "300,a,1,true,0,,0",
            // used 2; need 1 unit to expire: the entry at 0, live until 1000: retry 400
            "600,a,1,false,0,400,0",
            // the entry at 0 is no longer live (0 > 0 is false): used 1
            "1000,a,1,true,0,,0",
            // live 300 and 1000, need 2 to expire: the one at 1000, retry 2000 - 1200
            "1200,a,2,false,0,800,0",
            // live: 1000 only
            "1300,a,1,true,0,,0",
            // live: none (1300 > 1300 is false)
            "2300,a,2,true,0,,0",
            // 3 > L = 2: never admitted
            "2300,a,3,false,0,,0",
        ])
    );
}

/// sliding_window_counter, 4 per 1s: admit iff prev*(1000 - e) + (curr + c)*1000 <= 4000.
#[test]
fn sliding_window_counter() {
    let trace = "time_ms,key,cost\n\
                 0,a,1\n\
                 0,a,3\n\
                 500,a,1\n\
                 1250,a,1\n\
                 1500,a,1\n\
                 1600,a,1\n\
                 2100,a,2\n\
                 2100,a,5\n\
                 3900,b,1\n";
    let out = simulate_ok(
        &[
            "--algorithm",
            "sliding_window_counter",
            "--limit",
            "4",
            "--period",
            "1s",
        ],
        trace,
    );
    assert_eq!(
        out,
        expected(&[
            // curr 1: remaining (4000 - 1000) / 1000 = 3
            "0,a,1,true,3,,0",
            // curr 4
            "0,a,3,true,0,,0",
            // (4 + 1) * 1000 > 4000. Next window, prev = 4: 4*(1000 - e) + 1000 <= 4000
            // from e = 250, at 1250: retry 750
            "500,a,1,false,0,750,0",
            // e = 250: 4*750 + 1*1000 = 4000; remaining (4000 - 3000 - 1000) / 1000 = 0
            "1250,a,1,true,0,,0",
            // e = 500: 4*500 + 2*1000 = 4000
            "1500,a,1,true,0,,0",
            // e = 600: 4*400 + 3*1000 = 4600 > 4000; 4*(1000 - e) + 3000 <= 4000 from
            // e = 750: retry 150
            "1600,a,1,false,0,150,0",
            // window 2, prev 2, e = 100: 2*900 + 2*1000 = 3800; remaining 200/1000 = 0
            "2100,a,2,true,0,,0",
            // 5 > L = 4: never admitted
            "2100,a,5,false,0,,0",
            "3900,b,1,true,3,,0",
        ])
    );
}

/// gcra and token_bucket decide alike (ALGORITHMS.md's invariant), and leaky_bucket
/// admits what gcra admits; on a longer trace with several keys.
#[test]
fn bucket_family_agrees() {
    let mut trace = String::from("time_ms,key,cost\n");
    for i in 0..300u64 {
        let key = ["a", "b", "c"][(i % 3) as usize];
        let cost = 1 + i % 4;
        trace.push_str(&format!("{},{key},{cost}\n", i * 37));
    }
    let run = |algorithm| {
        simulate_ok(
            &[
                "--algorithm",
                algorithm,
                "--limit",
                "7",
                "--period",
                "3s",
                "--burst",
                "5",
            ],
            &trace,
        )
    };
    let allowed = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.split(',').take(4).collect::<Vec<_>>().join(","))
            .collect()
    };
    let gcra = run("gcra");
    let token = run("token_bucket");
    let leaky = run("leaky_bucket");
    assert_eq!(gcra, token);
    assert_eq!(allowed(&gcra), allowed(&leaky));
    assert!(gcra.contains(",true,") && gcra.contains(",false,"));
    assert_eq!(gcra.lines().count(), 301);
}

#[test]
fn reads_a_file_given_with_input() {
    let path = scratch_file("trace.csv", b"time_ms,key,cost\n0,a,1\n0,a,1\n");
    let path = path.to_str().expect("UTF-8 path");
    let run = crate::common::tollgate(
        &[
            "simulate",
            "--algorithm",
            "fixed_window",
            "--limit",
            "1",
            "--period",
            "1m",
            "--input",
            path,
        ],
        // stdin is not read when --input names a file
        "this is not a trace",
    );
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        expected(&["0,a,1,true,0,,0", "0,a,1,false,0,60000,0"])
    );
}

#[test]
fn input_dash_and_no_input_read_stdin() {
    let trace = "time_ms,key,cost\n0,a,1\n0,a,1\n";
    let want = expected(&["0,a,1,true,0,,0", "0,a,1,false,0,500,0"]);
    let flags = [
        "--algorithm",
        "gcra",
        "--limit",
        "2",
        "--period",
        "1s",
        "--burst",
        "1",
    ];
    assert_eq!(simulate_ok(&flags, trace), want);
    let mut with_dash = flags.to_vec();
    with_dash.extend(["--input", "-"]);
    assert_eq!(simulate_ok(&with_dash, trace), want);
}

#[test]
fn periods_in_every_unit() {
    // One per period, two requests at 0: the second's retry is the period.
    let trace = "time_ms,key,cost\n0,a,1\n0,a,1\n";
    for (period, ms) in [
        ("500ms", "500"),
        ("15s", "15000"),
        ("1m", "60000"),
        ("1h", "3600000"),
    ] {
        let out = simulate_ok(
            &["--algorithm", "gcra", "--limit", "1", "--period", period],
            trace,
        );
        assert_eq!(
            out,
            expected(&["0,a,1,true,0,,0", &format!("0,a,1,false,0,{ms},0")]),
            "{period}"
        );
    }
}

#[test]
fn header_only_prints_the_header_only() {
    assert_eq!(
        simulate_ok(
            &["--algorithm", "gcra", "--limit", "1", "--period", "1s"],
            "time_ms,key,cost\n"
        ),
        HEADER
    );
}

/// A key is any string: empty, with spaces, quoted commas and quotes, UTF-8. Keys
/// are echoed as CSV quotes them; numbers are echoed as read (007 -> 7). CRLF line
/// ends, a byte order mark and blank lines are accepted.
#[test]
fn keys_are_any_string() {
    let trace = "\u{feff}time_ms,key,cost\r\n\
                 0,,1\r\n\
                 \r\n\
                 007, spaced ,1\r\n\
                 10,\"a,b\",1\r\n\
                 20,\"say \"\"hi\"\"\",1\r\n\
                 30,élan,1\r\n\
                 40,,1\r\n";
    let out = simulate_ok(
        &[
            "--algorithm",
            "fixed_window",
            "--limit",
            "1",
            "--period",
            "1s",
        ],
        trace,
    );
    assert_eq!(
        out,
        expected(&[
            "0,,1,true,0,,0",
            "7, spaced ,1,true,0,,0",
            "10,\"a,b\",1,true,0,,0",
            "20,\"say \"\"hi\"\"\",1,true,0,,0",
            "30,élan,1,true,0,,0",
            // the empty key again: same window, denied
            "40,,1,false,0,960,0",
        ])
    );
}

/// The same request at the same instant twice is fine (times may repeat), and a
/// --burst given to a window algorithm is accepted with a warning.
#[test]
fn burst_on_a_window_algorithm_warns() {
    let run = simulate(
        &[
            "--algorithm",
            "fixed_window",
            "--limit",
            "1",
            "--period",
            "1s",
            "--burst",
            "5",
        ],
        "time_ms,key,cost\n0,a,1\n0,a,1\n",
    );
    assert_eq!(run.status, 0, "{run:?}");
    assert_eq!(
        run.stdout,
        expected(&["0,a,1,true,0,,0", "0,a,1,false,0,1000,0"])
    );
    assert!(
        run.stderr
            .starts_with("warning: --burst is ignored by fixed_window"),
        "{run:?}"
    );
}

/// Reading a few rows and closing the pipe (`| head`) stops the simulator quietly,
/// with status 0.
#[test]
fn a_closed_stdout_ends_quietly() {
    let path = scratch_file("long.csv", &{
        let mut trace = b"time_ms,key,cost\n".to_vec();
        for i in 0..200_000 {
            trace.extend_from_slice(format!("{i},k{},1\n", i % 1000).as_bytes());
        }
        trace
    });
    let mut child = command(&[
        "simulate",
        "--algorithm",
        "gcra",
        "--limit",
        "10",
        "--period",
        "1s",
        "--input",
        path.to_str().expect("UTF-8 path"),
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start tollgate");
    let mut stdout = child.stdout.take().expect("piped");
    let mut first = [0u8; 64];
    stdout.read_exact(&mut first).expect("the first bytes");
    assert!(first.starts_with(b"time_ms,key,cost,allowed"));
    drop(stdout);
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
}
