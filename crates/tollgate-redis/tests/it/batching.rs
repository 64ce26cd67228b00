//! Calls made together go to a single Redis as one batch: each still gets its own
//! answer, and a batch that never went out (its runtime shut down) fails its calls
//! without blocking later ones.

use std::future::Future;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tollgate::{Algorithm, Check, Policy, Store};

use crate::common::store;

#[tokio::test(flavor = "current_thread")]
async fn calls_in_flight_together_each_get_their_own_decision() {
    let store = store("batching").await;
    let policy = Policy::new(Algorithm::Gcra, 3, Duration::from_secs(3600)).expect("policy");
    // 100 keys, 5 checks each, all in flight at once (several batches): exactly 3
    // admitted per key, whatever batch each check went out in.
    let mut tasks = Vec::new();
    for round in 0..5 {
        for k in 0..100 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("k{k}");
                let v = store
                    .check(&[Check::new(&key, &policy)])
                    .await
                    .expect("check");
                (k, round, v.allowed())
            }));
        }
    }
    let mut admitted = [0; 100];
    for t in tasks {
        let (k, _, allowed) = t.await.expect("task");
        admitted[k] += usize::from(allowed);
    }
    assert!(admitted.iter().all(|&a| a == 3), "{admitted:?}");
}

#[test]
fn a_batch_dropped_unsent_fails_its_calls_and_later_calls_are_served() {
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    };
    // The store's connections live on `main`; a call is made on `short`, which
    // shuts down before the batch it started runs.
    let main = runtime();
    let store = main.block_on(store("batching-dropped"));
    let policy = Policy::new(Algorithm::Gcra, 10, Duration::from_secs(60)).expect("policy");
    let short = runtime();
    let mut call = {
        let store = store.clone();
        let _inside = short.enter();
        let mut call = Box::pin(async move {
            store
                .check(&[Check::new("a", &policy)])
                .await
                .map(|v| v.allowed())
        });
        let mut cx = Context::from_waker(Waker::noop());
        assert!(call.as_mut().poll(&mut cx).is_pending());
        call
    };
    drop(short);
    // The queued call fails at once (its batch is gone), not after the timeout.
    let mut cx = Context::from_waker(Waker::noop());
    match call.as_mut().poll(&mut cx) {
        Poll::Ready(Err(e)) => assert!(e.is_transient(), "{e}"),
        other => panic!("the call went on: {other:?}"),
    }
    // Later calls start a new batch and are decided.
    let v = main
        .block_on(async {
            tokio::time::timeout(
                Duration::from_secs(5),
                store.check(&[Check::new("b", &policy)]),
            )
            .await
        })
        .expect("answered in time")
        .expect("check");
    assert!(v.allowed());
}
