//! [`RedisStore`]: the [`Store`] whose states live in Redis or a Redis Cluster.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use smallvec::SmallVec;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tollgate::{
    Algorithm, Check, CheckError, Clock, Decision, DenyReason, Nanos, Policy, State, Store,
    Verdict, validate,
};

use crate::breaker::{
    Attempt, Breakers, DEFAULT_BREAKER_COOLDOWN, DEFAULT_BREAKER_FAILURES, Outcome,
};
use crate::error::RedisError;
use crate::keys::{arg_log_key, arg_state_key, log_key, slot_of, state_key};
use crate::url::{Target, parse};

/// The decision function's library (see `lua/tollgate.lua` for its contract), with
/// `__NAME__` where its name goes.
const LIBRARY: &str = include_str!("../lua/tollgate.lua");

/// The library's name, `tollgate_` and a hash of its text, and its text.
fn library() -> (String, String) {
    let hash = redis::Script::new(LIBRARY).get_hash().to_owned();
    let name = format!("tollgate_{}", &hash[..16]);
    let code = LIBRARY.replace("__NAME__", &name);
    (name, code)
}

/// The longest period and burst tolerance the store accepts: 2^52 ns, about 52 days.
///
/// Lua numbers are doubles, exact for integers below 2^53; the function keeps instants
/// as seconds and nanoseconds and computes large products exactly, but needs every
/// duration to stay below this bound.
pub const MAX_DURATION: Nanos = Nanos::new(1 << 52);

/// Replies per check in the function's answer.
const FIELDS: usize = 8;

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "tollgate:";

/// Builds a [`RedisStore`].
pub struct RedisStoreBuilder {
    url: String,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    clock: Option<Arc<dyn Clock>>,
    caller_ttl: Duration,
    connections: usize,
    root_cert: Option<Vec<u8>>,
    lazy: bool,
    per_thread: bool,
    breaker: (u32, Duration),
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("url", &redact(&self.url))
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("caller_clock", &self.clock.is_some())
            .field("connections", &self.connections)
            .field("per_thread", &self.per_thread)
            .field("breaker", &self.breaker)
            .finish()
    }
}

impl RedisStoreBuilder {
    /// Every key the store writes starts with `prefix` (default `tollgate:`). It may
    /// not hold `{` or `}`: the store puts the hash tag there.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one decision may take, all round trips included (default 50 ms).
    /// A decision that runs out of time returns [`RedisError::Timeout`] and is not
    /// replayed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting may take (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Decide at the instants of `clock` instead of Redis `TIME`: for tests, the
    /// simulator and replaying traces. Keys then live at least
    /// [`RedisStoreBuilder::caller_clock_ttl`] on Redis's own clock.
    pub fn caller_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// In caller-clock mode, the least time-to-live of written keys (default 10
    /// minutes): the caller's clock need not run at the speed of Redis's, so the
    /// time-to-live computed on it must not make a key expire early.
    pub fn caller_clock_ttl(mut self, ttl: Duration) -> Self {
        self.caller_ttl = ttl;
        self
    }

    /// Connections to a single Redis server (default 2; ignored for a cluster, where
    /// the client keeps one per node). Each is multiplexed: any number of checks in
    /// flight share it, pipelined.
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// One connection per thread that calls the store, instead of
    /// [`RedisStoreBuilder::connections`] shared by all (default: shared; ignored for
    /// a cluster). A thread's connection is made on its first call, on the runtime
    /// that runs that call, and its calls are batched on that thread alone.
    ///
    /// For a program that runs one single-threaded runtime per thread (as the
    /// tollgate server does): a call is then written, read and answered without
    /// waking another thread. With shared connections each call goes to the
    /// runtime that made them and back, and on a small machine those thread
    /// switches cost more than the client's own work. A thread's connection lives
    /// as long as the store.
    pub fn connection_per_thread(mut self, yes: bool) -> Self {
        self.per_thread = yes;
        self
    }

    /// For `rediss://`: trust the certificate authority in `pem` (PEM text) instead
    /// of the system's trust store, as for a Redis with a private CA.
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cert = Some(pem.into());
        self
    }

    /// Connect to a single Redis server on first use instead of now (default: now),
    /// so the store can be made while Redis is down: calls fail with a transient
    /// error until it is up, then succeed. A cluster is always connected now (the
    /// client needs its slot map).
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// The circuit breaker: after `failures` decisions in a row that timed out or
    /// found Redis unreachable, decisions fail at once with
    /// [`RedisError::CircuitOpen`] for `cooldown`, instead of each waiting out the
    /// timeout; then one decision goes to Redis as a probe, and an answer closes
    /// the breaker. `failures = 0` turns it off. On a Redis Cluster there is one
    /// breaker per range of 256 slots: a node that hangs opens the breakers of its
    /// slots, and decisions on the other nodes' slots go on (a stack spanning
    /// several ranges goes through each of their breakers, and its outcome counts
    /// in each). Default
    /// [`DEFAULT_BREAKER_FAILURES`](crate::DEFAULT_BREAKER_FAILURES) and
    /// [`DEFAULT_BREAKER_COOLDOWN`](crate::DEFAULT_BREAKER_COOLDOWN).
    pub fn circuit_breaker(mut self, failures: u32, cooldown: Duration) -> Self {
        self.breaker = (failures, cooldown);
        self
    }

    /// Connects. Fails when the URL or the prefix is invalid, or Redis cannot be
    /// reached within the connect timeout (unless [`RedisStoreBuilder::lazy`]).
    pub async fn connect(self) -> Result<RedisStore, RedisError> {
        if self.prefix.contains(['{', '}']) {
            return Err(RedisError::Config(format!(
                "key prefix {:?} holds a brace: braces are reserved for the hash tag",
                self.prefix
            )));
        }
        let target = parse(&self.url)?;
        install_tls_provider();
        let (function, code) = library();
        let many: Arc<str> = Arc::from(format!("{function}_n"));
        let wait = self.connect_timeout;
        let conns = match target {
            Target::Single(url) => {
                let client = match &self.root_cert {
                    Some(pem) => redis::Client::build_with_tls(url.as_str(), certificates(pem)),
                    None => redis::Client::open(url.as_str()),
                }
                .map_err(|e| RedisError::Config(format!("store url {}: {e}", redact(&url))))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(wait))
                    .set_response_timeout(None)
                    // No retries inside the manager: it would sleep between them
                    // (up to its backoff) while calls wait on it. A failed connect
                    // fails the calls waiting for it; the next call connects anew.
                    .set_number_of_retries(0);
                let shared = if self.per_thread {
                    None
                } else {
                    let mut all = Vec::with_capacity(self.connections);
                    for _ in 0..self.connections {
                        if self.lazy {
                            let made = ConnectionManager::new_lazy_with_config(
                                client.clone(),
                                config.clone(),
                            )
                            .map_err(|e| {
                                RedisError::Config(format!("store url {}: {e}", redact(&url)))
                            })?;
                            all.push(made);
                            continue;
                        }
                        let made = tokio::time::timeout(
                            wait,
                            client.get_connection_manager_with_config(config.clone()),
                        )
                        .await
                        .map_err(|_| RedisError::Timeout(wait))?
                        .map_err(RedisError::Unavailable)?;
                        all.push(made);
                    }
                    Some(Arc::new(Lane::new(all, Arc::clone(&many), self.timeout)))
                };
                Conns::Single(Box::new(Single {
                    client,
                    config,
                    shared,
                    many,
                    id: NEXT_STORE.fetch_add(1, Ordering::Relaxed),
                    lanes: Arc::new(Mutex::new(Vec::new())),
                    timeout: self.timeout,
                }))
            }
            Target::Cluster(nodes) => {
                // No retries inside the client: it would resend a call whose
                // connection broke mid-call, and the call may have run. The store
                // retries only the answers that prove a call did not run (MOVED,
                // ASK, TRYAGAIN, CLUSTERDOWN, LOADING, "Function not found").
                let mut builder = redis::cluster::ClusterClient::builder(nodes)
                    .retries(0)
                    .connection_timeout(wait)
                    .response_timeout(self.timeout);
                if let Some(pem) = &self.root_cert {
                    builder = builder.certs(certificates(pem));
                }
                let client = builder.build().map_err(|e| {
                    RedisError::Config(format!("store url {}: {e}", redact(&self.url)))
                })?;
                let conn = tokio::time::timeout(wait, client.get_async_connection())
                    .await
                    .map_err(|_| RedisError::Timeout(wait))?
                    .map_err(RedisError::Unavailable)?;
                Conns::Cluster(conn)
            }
        };
        let least_ttl_ms = if self.clock.is_some() {
            u64::try_from(self.caller_ttl.as_millis()).unwrap_or(u64::MAX)
        } else {
            0
        };
        let single = format!("{function}_1");
        let cluster = matches!(conns, Conns::Cluster(_));
        let store = RedisStore {
            inner: Arc::new(Inner {
                conns,
                prefix: self.prefix,
                timeout: self.timeout,
                connect_timeout: wait,
                clock: self.clock,
                least_ttl_ms,
                function,
                single,
                code,
                breakers: Breakers::new(cluster, self.breaker.0, self.breaker.1),
            }),
        };
        let lazy = self.lazy && !store.is_cluster();
        if !lazy {
            tokio::time::timeout(wait, store.load(Instant::now() + store.inner.timeout))
                .await
                .map_err(|_| RedisError::Timeout(wait))??;
        }
        // A lazy store loads the function on its first call ("Function not found").
        Ok(store)
    }
}

fn certificates(pem: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.to_vec()),
    }
}

fn install_tls_provider() {
    // rediss:// needs a process-wide rustls crypto provider; installing one when
    // another is already installed fails harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A URL with its password replaced by `***`, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}***{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

enum Conns {
    /// A single server (boxed: its client and settings are large, and the enum is
    /// matched on every call).
    Single(Box<Single>),
    Cluster(ClusterConnection),
}

/// A single server's connections: one [`Lane`] shared by every thread, or one per
/// thread that calls the store ([`RedisStoreBuilder::connection_per_thread`]).
struct Single {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The lane every thread shares; `None` for a lane per thread.
    shared: Option<Arc<Lane>>,
    /// The library's function for many one-check calls (`<name>_n`).
    many: Arc<str>,
    /// This store's number, which its threads' lanes are found by.
    id: u64,
    /// The per-thread lanes, owned here so they close with the store; each thread
    /// finds its own through [`THREAD_LANES`], and takes it out when it exits.
    lanes: Arc<Lanes>,
    timeout: Duration,
}

/// Numbers the stores, for [`THREAD_LANES`]. Never reused, unlike an address.
static NEXT_STORE: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// This thread's lane of each store with a lane per thread.
    static THREAD_LANES: RefCell<ThreadLanes> = const { RefCell::new(ThreadLanes(Vec::new())) };
}

/// A thread's lanes: the store's number, the lane, and the store's list of lanes.
/// Weak both: a dropped store's lanes close, whatever threads saw them.
struct ThreadLanes(Vec<(u64, Weak<Lane>, Weak<Lanes>)>);

/// A store's per-thread lanes.
type Lanes = Mutex<Vec<Arc<Lane>>>;

impl Drop for ThreadLanes {
    /// The thread exits: its lanes close (their stores forget them).
    fn drop(&mut self) {
        for (_, lane, lanes) in &self.0 {
            if let Some(lanes) = lanes.upgrade() {
                lock(&lanes).retain(|l| !std::ptr::eq(Arc::as_ptr(l), lane.as_ptr()));
            }
        }
    }
}

impl Single {
    /// The lane this call goes through: the shared one, or this thread's (made now,
    /// on the calling runtime, if this is the thread's first call).
    fn lane(&self) -> Result<Arc<Lane>, RedisError> {
        if let Some(shared) = &self.shared {
            return Ok(Arc::clone(shared));
        }
        THREAD_LANES.with(|cell| {
            let mut mine = cell.borrow_mut();
            if let Some(lane) = mine
                .0
                .iter()
                .find(|(id, ..)| *id == self.id)
                .and_then(|(_, lane, _)| lane.upgrade())
            {
                return Ok(lane);
            }
            // This thread's first call (or its lanes of dropped stores linger):
            // forget the dead ones and make this thread's.
            mine.0
                .retain(|(id, lane, _)| *id != self.id && lane.strong_count() > 0);
            let conn =
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                    .map_err(RedisError::Unavailable)?;
            let lane = Arc::new(Lane::new(vec![conn], Arc::clone(&self.many), self.timeout));
            lock(&self.lanes).push(Arc::clone(&lane));
            mine.0
                .push((self.id, Arc::downgrade(&lane), Arc::downgrade(&self.lanes)));
            Ok(lane)
        })
    }
}

/// Connections, and the calls waiting to be sent together on them.
struct Lane {
    conns: Vec<ConnectionManager>,
    /// The library's function for many one-check calls at once (`<name>_n`).
    many: Arc<str>,
    /// The connection the next batch goes out on, modulo their number.
    next: AtomicUsize,
    queue: Mutex<Queue>,
    timeout: Duration,
}

impl Lane {
    fn new(conns: Vec<ConnectionManager>, many: Arc<str>, timeout: Duration) -> Lane {
        Lane {
            conns,
            many,
            next: AtomicUsize::new(0),
            queue: Mutex::new(Queue {
                pipe: redis::Pipeline::with_capacity(BATCH),
                replies: Vec::with_capacity(BATCH),
                ones: Vec::with_capacity(BATCH),
                one_replies: Vec::with_capacity(BATCH),
                deadline: Instant::now(),
                batch: 0,
                spare: None,
            }),
            timeout,
        }
    }
}

/// What a call is, for the batch it joins.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Call {
    /// Any command, sent as it is.
    Plain,
    /// `FCALL <name>_1`: one check, which may go with others as one `FCALL <name>_n`.
    One,
}

/// Where a call's reply goes.
type Reply = oneshot::Sender<Result<redis::Value, RedisError>>;

/// The calls of a single server waiting to be sent together.
struct Queue {
    /// The calls, in the order they joined, but for the one-check calls.
    pipe: redis::Pipeline,
    /// Where each call's reply goes.
    replies: Vec<Reply>,
    /// The one-check calls (`FCALL <name>_1`), sent as one `FCALL <name>_n` when
    /// there are several (see [`many_call`]).
    ones: Vec<redis::Cmd>,
    /// Where each one-check call's reply goes.
    one_replies: Vec<Reply>,
    /// When the batch's first call gives up: the batch gives up then.
    deadline: Instant,
    /// Counts the batches taken: a task started for a batch that another call
    /// already sent (when it filled up) finds a later number and leaves.
    batch: u64,
    /// A sent batch's emptied vectors, kept for the next batch: a batch allocates
    /// nothing of its own (each would be large, and glibc sorts its free lists
    /// before every large allocation).
    spare: Option<Calls>,
}

impl Queue {
    /// How many calls wait.
    fn len(&self) -> usize {
        self.replies.len() + self.one_replies.len()
    }
}

/// Calls taken from a queue to be sent (or, emptied, kept for the next batch).
struct Calls {
    pipe: redis::Pipeline,
    replies: Vec<Reply>,
    ones: Vec<redis::Cmd>,
    one_replies: Vec<Reply>,
}

impl Calls {
    fn new() -> Calls {
        Calls {
            pipe: redis::Pipeline::with_capacity(BATCH),
            replies: Vec::with_capacity(BATCH),
            ones: Vec::with_capacity(BATCH),
            one_replies: Vec::with_capacity(BATCH),
        }
    }

    fn clear(&mut self) {
        self.pipe.clear();
        self.replies.clear();
        self.ones.clear();
        self.one_replies.clear();
    }
}

/// Calls taken from a queue to be sent.
struct Batch {
    calls: Calls,
    deadline: Instant,
}

impl Queue {
    /// Takes the queued calls as a batch (the next one starts empty).
    fn take(&mut self) -> Batch {
        self.batch += 1;
        let next = self.spare.take().unwrap_or_else(Calls::new);
        Batch {
            calls: Calls {
                pipe: std::mem::replace(&mut self.pipe, next.pipe),
                replies: std::mem::replace(&mut self.replies, next.replies),
                ones: std::mem::replace(&mut self.ones, next.ones),
                one_replies: std::mem::replace(&mut self.one_replies, next.one_replies),
            },
            deadline: self.deadline,
        }
    }
}

/// The most calls sent in one batch. A full batch leaves at once, so Redis works on
/// it while the client is still answering and queueing the others: calls in flight
/// go out in a few batches instead of one, which would leave each side idle while
/// the other works.
/// With 64 calls in flight on two cores, 32 (two batches) did better than 8, 16
/// or no bound at all. With Redis pinned to a core of its own (`benches/pinned.sh`),
/// 16 and 32 measured alike (two alternating runs each).
const BATCH: usize = 32;

struct Inner {
    conns: Conns,
    prefix: String,
    timeout: Duration,
    connect_timeout: Duration,
    clock: Option<Arc<dyn Clock>>,
    least_ttl_ms: u64,
    /// The function's name (also its library's).
    function: String,
    /// The name of its sibling for exactly one check.
    single: String,
    /// The library's text, for FUNCTION LOAD.
    code: String,
    /// One circuit breaker, or one per slot range of a cluster.
    breakers: Breakers,
}

/// The Redis and Redis Cluster store.
///
/// Every decision is one round trip running one function (`lua/tollgate.lua`, a
/// Redis Functions library the store loads itself) that
/// reads the time with Redis `TIME`, decides every check of a stack, and writes the
/// new states with a time-to-live, all atomically: however many processes share the
/// Redis, exactly the limit gets through. The decisions are those of
/// [`tollgate::MemoryStore`], bit for bit (a conformance suite holds it to that).
///
/// Keys are built as `<prefix>{<client>}s:<policy>` from a check key
/// `<policy>:<client>`, so a client's stacked policies share a cluster slot and are
/// decided by one call. A stack whose keys fall in several slots of a cluster (a
/// per-client policy with a global one) is decided one slot after another: when a
/// later slot denies, what the earlier ones consumed is given back. That case is not
/// atomic: between the calls, other requests see the earlier consumption.
///
/// Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("cluster", &matches!(self.inner.conns, Conns::Cluster(_)))
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("caller_clock", &self.inner.clock.is_some())
            .finish()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Check,
    Peek,
    GiveBack,
}

impl Mode {
    fn arg(self) -> &'static str {
        match self {
            Mode::Check => "c",
            Mode::Peek => "p",
            Mode::GiveBack => "g",
        }
    }
}

/// One check's answer from the function, before the stack is put together.
#[derive(Clone, Copy)]
struct Answer {
    decision: Decision,
    /// What the key holds without this request: remaining, reset_after.
    view: (u64, Nanos),
}

/// An instant as the function holds it: Unix seconds and nanoseconds.
#[derive(Clone, Copy, Debug)]
struct Instant2(i64, i64);

impl RedisStore {
    /// A builder for the store at `url`.
    pub fn builder(url: impl Into<String>) -> RedisStoreBuilder {
        RedisStoreBuilder {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(2),
            clock: None,
            caller_ttl: Duration::from_secs(600),
            connections: 2,
            root_cert: None,
            lazy: false,
            per_thread: false,
            breaker: (DEFAULT_BREAKER_FAILURES, DEFAULT_BREAKER_COOLDOWN),
        }
    }

    /// Connects to `url` with the default options.
    pub async fn connect(url: &str) -> Result<RedisStore, RedisError> {
        RedisStore::builder(url).connect().await
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// True while the circuit breaker holds decisions back (see
    /// [`RedisStoreBuilder::circuit_breaker`]); on a cluster, while any of its slot
    /// ranges' breakers does.
    pub fn is_circuit_open(&self) -> bool {
        self.inner.breakers.any_open()
    }

    /// True when the store talks to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.conns, Conns::Cluster(_))
    }

    /// The Redis keys (state, log) that hold `key`'s state: for tools and tests.
    pub fn redis_keys(&self, key: &str) -> (Vec<u8>, Vec<u8>) {
        (
            state_key(&self.inner.prefix, key),
            log_key(&self.inner.prefix, key),
        )
    }

    /// Asks Redis for `PING`, within the timeout: is the store reachable?
    ///
    /// A connection that broke since its last call (Redis restarted, say) fails its
    /// next call, which makes it reconnect; a `PING` can be sent again without
    /// harm, so that failure is retried once, on the new connection. The answer is
    /// then about Redis, not about this connection's past: with a connection per
    /// thread, every thread answers alike.
    pub async fn ping(&self) -> Result<(), RedisError> {
        self.timed(async {
            let deadline = Instant::now() + self.inner.timeout;
            match self
                .query::<String>(redis::cmd("PING"), Call::Plain, deadline)
                .await
            {
                Err(RedisError::Unavailable(_)) => {
                    self.query::<String>(redis::cmd("PING"), Call::Plain, deadline)
                        .await
                }
                other => other,
            }
        })
        .await?
        .and_then(|pong| {
            if pong == "PONG" {
                Ok(())
            } else {
                Err(RedisError::Reply(format!("PING answered {pong:?}")))
            }
        })
    }

    /// Connects this thread's connection now, within the connect timeout, when the
    /// store has a connection per thread ([`RedisStoreBuilder::connection_per_thread`]),
    /// so the thread's first call does not spend its timeout connecting. Otherwise
    /// (shared connections, a cluster) the connections were made by `connect`, and
    /// this only checks they answer. A thread that is about to serve calls (a
    /// server's worker) calls it first.
    pub async fn warm_up(&self) -> Result<(), RedisError> {
        let Conns::Single(single) = &self.inner.conns else {
            return Ok(());
        };
        let lane = single.lane()?;
        let wait = self.inner.connect_timeout;
        for conn in &lane.conns {
            let mut conn = conn.clone();
            tokio::time::timeout(wait, conn.send_packed_command(&redis::cmd("PING")))
                .await
                .map_err(|_| RedisError::Timeout(wait))?
                .map_err(classify)?;
        }
        Ok(())
    }

    async fn timed<F: Future>(&self, fut: F) -> Result<F::Output, RedisError> {
        tokio::time::timeout(self.inner.timeout, fut)
            .await
            .map_err(|_| RedisError::Timeout(self.inner.timeout))
    }

    /// Sends `cmd`. On a single server the call gives up at `deadline` (the batch
    /// it joins does); on a cluster the client's response timeout bounds it.
    async fn query<T: redis::FromRedisValue>(
        &self,
        cmd: redis::Cmd,
        kind: Call,
        deadline: Instant,
    ) -> Result<T, RedisError> {
        let value = match &self.inner.conns {
            Conns::Single(..) => self.batched(cmd, kind, deadline).await?,
            Conns::Cluster(conn) => {
                let mut conn = conn.clone();
                return cmd.query_async::<T>(&mut conn).await.map_err(classify);
            }
        };
        let value = value.extract_error().map_err(classify)?;
        redis::from_redis_value(value).map_err(|e| classify(e.into()))
    }

    /// Sends `cmd` to the single server with the other calls made meanwhile: the
    /// call that finds no batch waiting starts one (a task that first lets every
    /// other ready task run, so the calls they make join it), and the batch goes out
    /// as one pipeline, one write, on the next connection in turn. Whatever the
    /// runtime, calls in flight together cost one message through the client and
    /// one read for Redis, not one each.
    ///
    /// One-check calls (`kind` [`Call::One`]) in a batch go as one call of the
    /// library's `_n` function, which decides each as its `_1` would: Redis runs one
    /// function call for them, not one each, which is most of its cost per check.
    ///
    /// A batch gives up at the deadline of its first call, which is never later
    /// than any other's (they joined after it): no call waits past its own deadline,
    /// and none needs a timer of its own.
    async fn batched(
        &self,
        cmd: redis::Cmd,
        kind: Call,
        deadline: Instant,
    ) -> Result<redis::Value, RedisError> {
        let Conns::Single(single) = &self.inner.conns else {
            return Err(RedisError::Reply("a batch on a cluster".to_owned()));
        };
        let lane = single.lane()?;
        let (tx, rx) = oneshot::channel();
        let (start, full) = {
            let mut q = lock(&lane.queue);
            match kind {
                Call::Plain => {
                    q.pipe.add_command(cmd);
                    q.replies.push(tx);
                }
                Call::One => {
                    q.ones.push(cmd);
                    q.one_replies.push(tx);
                }
            }
            let n = q.len();
            if n == 1 {
                q.deadline = deadline;
            }
            if n >= BATCH {
                (None, Some(q.take()))
            } else if n == 1 {
                (Some(q.batch), None)
            } else {
                (None, None)
            }
        };
        if let Some(batch) = start {
            tokio::spawn(send_batch(Unsent(Some((Arc::clone(&lane), batch)))));
        }
        if let Some(batch) = full {
            tokio::spawn(send_calls(lane, batch));
        }
        // The sender is only dropped unanswered when the runtime shuts down.
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    fn check_args(checks: &[Check<'_>]) -> Result<(), RedisError> {
        validate(checks)?;
        for (i, c) in checks.iter().enumerate() {
            if checks[..i].iter().any(|b| b.key == c.key) {
                return Err(CheckError::DuplicateKey(c.key.to_owned()).into());
            }
            in_range(c.policy)?;
        }
        Ok(())
    }

    /// Groups the checks by cluster slot, in the order of their first check. A
    /// single server has one group.
    fn groups(&self, checks: &[Check<'_>]) -> SmallVec<[SmallVec<[usize; 4]>; 2]> {
        let mut groups: SmallVec<[SmallVec<[usize; 4]>; 2]> = SmallVec::new();
        if !self.is_cluster() {
            groups.push((0..checks.len()).collect());
            return groups;
        }
        let mut slots: SmallVec<[u16; 2]> = SmallVec::new();
        for (i, c) in checks.iter().enumerate() {
            let slot = slot_of(c.key);
            match slots.iter().position(|&s| s == slot) {
                Some(g) => groups[g].push(i),
                None => {
                    slots.push(slot);
                    groups.push(smallvec::smallvec![i]);
                }
            }
        }
        groups
    }

    async fn decide(&self, checks: &[Check<'_>], mode: Mode) -> Result<Verdict, RedisError> {
        Self::check_args(checks)?;
        let breakers = &self.inner.breakers;
        let open = |retry_in| RedisError::CircuitOpen {
            failures: breakers.first().settings().0,
            retry_in,
        };
        // Each breaker entered, with its slot range's number (0 for a single server).
        let mut attempts: SmallVec<[(usize, Attempt<'_>); 2]> = SmallVec::new();
        if breakers.per_slot() {
            // A cluster: the breaker of each slot range the checks touch, once.
            for c in checks {
                let range = breakers.range_of(slot_of(c.key));
                if !attempts.iter().any(|(r, _)| *r == range) {
                    let attempt = breakers.of_range(range).enter().map_err(open)?;
                    attempts.push((range, attempt));
                }
            }
        } else {
            attempts.push((0, breakers.first().enter().map_err(open)?));
        }
        let progress = Progress::default();
        let result = self.decide_through(checks, mode, &progress).await;
        let outcome = match &result {
            Ok(_) => Outcome::Answered,
            Err(e) if e.is_transient() => Outcome::Failed,
            Err(e) if e.is_caller_error() => Outcome::Neither,
            Err(_) => Outcome::Answered,
        };
        for (range, attempt) in attempts {
            let outcome = match outcome {
                Outcome::Failed if breakers.per_slot() => progress.outcome(range),
                o => o,
            };
            attempt.finish(outcome);
        }
        result
    }

    /// [`RedisStore::decide`] past the circuit breaker.
    async fn decide_through(
        &self,
        checks: &[Check<'_>],
        mode: Mode,
        progress: &Progress,
    ) -> Result<Verdict, RedisError> {
        let now = self.inner.clock.as_ref().map(|c| c.now());
        let deadline = Instant::now() + self.inner.timeout;
        if let [check] = checks {
            // One check, the common call: its own short path, whose future (moved
            // a few times on its way to the runtime) stays small. On a single server
            // the deadline bounds it (its batch gives up then) without a timer.
            let answer = if self.is_cluster() {
                self.timed(self.run_single(mode, now, check, deadline))
                    .await??
            } else {
                self.run_single(mode, now, check, deadline).await?
            };
            return Ok(Verdict::from_decisions(smallvec::smallvec![
                answer.decision
            ]));
        }
        // A stack: the general path, boxed so its larger state does not grow the
        // one-check future.
        Box::pin(self.timed(self.decide_groups(checks, mode, now, deadline, progress))).await?
    }

    async fn decide_groups(
        &self,
        checks: &[Check<'_>],
        mode: Mode,
        now: Option<Nanos>,
        deadline: Instant,
        progress: &Progress,
    ) -> Result<Verdict, RedisError> {
        let groups = self.groups(checks);
        // The slot range of a group's checks (they share a slot).
        let range = |group: &[usize]| {
            let slot = group.first().map_or(0, |&i| slot_of(checks[i].key));
            self.inner.breakers.range_of(slot)
        };
        let mut answers: SmallVec<[Option<Answer>; 4]> = smallvec::smallvec![None; checks.len()];
        let mut consumed: SmallVec<[(usize, Instant2); 2]> = SmallVec::new();
        let mut denied = false;
        for (g, group) in groups.iter().enumerate() {
            // After a denial, the remaining slots are only looked at.
            let this = if denied { Mode::Peek } else { mode };
            progress.start(range(group));
            let (at, got) = self.run(this, now, None, group, checks, deadline).await?;
            progress.answered(range(group));
            let group_denied = got.iter().any(|a| !a.decision.allowed);
            for (&i, a) in group.iter().zip(got) {
                answers[i] = Some(a);
            }
            if this == Mode::Check && !group_denied {
                consumed.push((g, at));
            }
            if group_denied && !denied {
                denied = true;
                // Give back what the earlier slots consumed. Best effort: should it
                // fail, the earlier slots keep a consumption (they admit less, never
                // more) until their keys expire.
                for &(cg, cat) in &consumed {
                    progress.start(range(&groups[cg]));
                    let _ = self
                        .run(
                            Mode::GiveBack,
                            None,
                            Some(cat),
                            &groups[cg],
                            checks,
                            deadline,
                        )
                        .await;
                }
                consumed.clear();
            }
        }
        let mut decisions: SmallVec<[Decision; 4]> = SmallVec::with_capacity(checks.len());
        for a in &answers {
            let a = a.ok_or_else(|| RedisError::Reply("a check went unanswered".to_owned()))?;
            let mut d = a.decision;
            if denied && d.allowed {
                // Nothing was consumed (or it was given back): report what it holds.
                d.remaining = a.view.0;
                d.reset_after = a.view.1;
                d.delay = Nanos::ZERO;
            }
            decisions.push(d);
        }
        Ok(Verdict::from_decisions(decisions))
    }

    /// Calls the function once over the checks of one slot.
    async fn run(
        &self,
        mode: Mode,
        now: Option<Nanos>,
        used: Option<Instant2>,
        group: &[usize],
        checks: &[Check<'_>],
        deadline: Instant,
    ) -> Result<(Instant2, SmallVec<[Answer; 4]>), RedisError> {
        if checks.len() == 1 && mode != Mode::GiveBack {
            // A stack of one check: the lean sibling function, whose answer is its
            // decision alone (the instant is only needed for a give-back).
            let answer = self.run_single(mode, now, &checks[0], deadline).await?;
            return Ok((Instant2(0, 0), smallvec::smallvec![answer]));
        }
        let mut cmd = redis::cmd("FCALL");
        let is_log = |i: usize| checks[i].policy.algorithm() == Algorithm::SlidingWindowLog;
        let numkeys = group
            .iter()
            .map(|&i| if is_log(i) { 2 } else { 1 })
            .sum::<usize>();
        cmd.arg(&self.inner.function).arg(numkeys);
        let prefix = &self.inner.prefix;
        for &i in group {
            cmd.arg(state_key(prefix, checks[i].key));
            if is_log(i) {
                cmd.arg(log_key(prefix, checks[i].key));
            }
        }
        cmd.arg(mode.arg());
        match (used, now) {
            (Some(Instant2(s, n)), _) => {
                cmd.arg(s).arg(n);
            }
            (None, Some(t)) => {
                cmd.arg(t.as_u64() / 1_000_000_000)
                    .arg(t.as_u64() % 1_000_000_000);
            }
            (None, None) => {
                cmd.arg("").arg("");
            }
        }
        cmd.arg(self.inner.least_ttl_ms);
        for &i in group {
            let c = &checks[i];
            let p = c.policy;
            cmd.arg(letter(p.algorithm()));
            if p.algorithm().is_bucket() {
                cmd.arg(p.emission_interval().as_u64())
                    .arg(p.tolerance().as_u64())
                    .arg(p.burst());
            } else {
                cmd.arg(p.limit()).arg(p.period().as_u64()).arg(0);
            }
            cmd.arg(c.cost.get());
        }
        let reply: Vec<i64> = self.fcall(|| cmd.clone(), Call::Plain, deadline).await?;
        let bad = || RedisError::Reply(format!("the function answered {} numbers", reply.len()));
        if reply.len() < 2 {
            return Err(bad());
        }
        let at = Instant2(reply[0], reply[1]);
        if mode == Mode::GiveBack {
            return Ok((at, SmallVec::new()));
        }
        if reply.len() != 2 + FIELDS * group.len() {
            return Err(bad());
        }
        let mut answers = SmallVec::new();
        for (k, &i) in group.iter().enumerate() {
            let f = &reply[2 + FIELDS * k..2 + FIELDS * (k + 1)];
            answers.push(answer(checks[i].policy, f)?);
        }
        Ok((at, answers))
    }

    /// Decides one check with the library's `_1` function: one short argument
    /// (which the function parses once and keeps) and a short answer.
    async fn run_single(
        &self,
        mode: Mode,
        now: Option<Nanos>,
        check: &Check<'_>,
        deadline: Instant,
    ) -> Result<Answer, RedisError> {
        let p = check.policy;
        let log = p.algorithm() == Algorithm::SlidingWindowLog;
        let (x, y, z) = if p.algorithm().is_bucket() {
            (
                p.emission_interval().as_u64(),
                p.tolerance().as_u64(),
                u64::from(p.burst()),
            )
        } else {
            (u64::from(p.limit()), p.period().as_u64(), 0)
        };
        let spec = Spec {
            mode: if mode == Mode::Check { b's' } else { b'q' },
            algorithm: letter(p.algorithm()).as_bytes()[0],
            numbers: [
                x,
                y,
                z,
                u64::from(check.cost.get()),
                self.inner.least_ttl_ms,
            ],
        };
        let build = || {
            // Sized for the usual call, so building it allocates once.
            let mut cmd = redis::Cmd::with_capacity(8, 128 + 2 * check.key.len());
            cmd.arg("FCALL")
                .arg(&self.inner.single)
                .arg(if log { "2" } else { "1" });
            arg_state_key(&mut cmd, &self.inner.prefix, check.key);
            if log {
                arg_log_key(&mut cmd, &self.inner.prefix, check.key);
            }
            spec.write(&mut cmd);
            if let Some(t) = now {
                cmd.arg(t.as_u64() / 1_000_000_000)
                    .arg(t.as_u64() % 1_000_000_000);
            }
            cmd
        };
        match self
            .fcall::<redis::Value>(build, Call::One, deadline)
            .await?
        {
            redis::Value::Int(reply) if p.algorithm().is_bucket() => {
                bucket_answer(p, check.cost, reply)
            }
            redis::Value::Array(items) if !p.algorithm().is_bucket() && items.len() == 6 => {
                let mut full = [0_i64; FIELDS];
                for (f, item) in full.iter_mut().zip(&items) {
                    match item {
                        redis::Value::Int(v) => *f = *v,
                        other => {
                            return Err(RedisError::Reply(format!(
                                "the function answered {other:?} in its decision"
                            )));
                        }
                    }
                }
                // The view is only read for the other checks of a denied stack.
                full[6] = full[1];
                full[7] = full[2];
                answer(p, &full)
            }
            other => Err(RedisError::Reply(format!(
                "the function answered {other:?} for one check"
            ))),
        }
    }

    /// Calls the function (`cmd` builds the FCALL, once per attempt), loading the
    /// library again when Redis has lost it.
    async fn fcall<T: redis::FromRedisValue>(
        &self,
        cmd: impl Fn() -> redis::Cmd,
        kind: Call,
        deadline: Instant,
    ) -> Result<T, RedisError> {
        let mut loads = 0;
        loop {
            match self.query::<T>(cmd(), kind, deadline).await {
                Ok(reply) => return Ok(reply),
                Err(RedisError::Server(e)) if missing_function(&e) && loads < 5 => {
                    // The function is gone (restart, failover, FUNCTION FLUSH): the
                    // error proves nothing ran. Load it and call again (a few times:
                    // it may be flushed again in between).
                    loads += 1;
                    self.load(deadline).await?;
                }
                Err(RedisError::Server(e)) if not_run(&e) => {
                    // The cluster is moving a slot or electing a master: nothing ran.
                    // Try again until the deadline.
                    let again = Instant::now() + Duration::from_millis(10);
                    if again >= deadline {
                        tokio::time::sleep_until(deadline).await;
                        return Err(RedisError::Timeout(self.inner.timeout));
                    }
                    tokio::time::sleep_until(again).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Loads the decision function (every master of a cluster). Needs Redis 7.
    async fn load(&self, deadline: Instant) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("FUNCTION");
        cmd.arg("LOAD").arg("REPLACE").arg(&self.inner.code);
        match self.query::<redis::Value>(cmd, Call::Plain, deadline).await {
            Ok(_) => Ok(()),
            Err(RedisError::Server(e)) if e.to_string().contains("unknown command") => {
                Err(RedisError::Config(format!(
                    "this Redis does not know FUNCTION LOAD: the store needs Redis 7 or later ({e})"
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Forgets `key`'s state.
    async fn forget(&self, key: &str) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(state_key(&self.inner.prefix, key))
            .arg(log_key(&self.inner.prefix, key));
        let deadline = Instant::now() + self.inner.timeout;
        let _: i64 = self.timed(self.query(cmd, Call::Plain, deadline)).await??;
        Ok(())
    }
}

/// Locks `m`; a panic elsewhere while it was held leaves a queue still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The error of a call whose batch was dropped unsent (its runtime shut down).
fn gone() -> RedisError {
    RedisError::Unavailable(redis::RedisError::from(std::io::Error::from(
        std::io::ErrorKind::BrokenPipe,
    )))
}

/// A batch not yet taken from the queue, and its number. Should its task be
/// dropped before it runs (the runtime shutting down), the calls queued fail at
/// once, and the queue is empty again, so the next call starts a new batch.
struct Unsent(Option<(Arc<Lane>, u64)>);

impl Unsent {
    /// The batch's calls, unless another call sent them already.
    fn take(&mut self) -> Option<(Arc<Lane>, Batch)> {
        let (lane, batch) = self.0.take()?;
        let calls = {
            let mut q = lock(&lane.queue);
            if q.batch != batch {
                return None;
            }
            q.take()
        };
        Some((lane, calls))
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        if let Some((_, batch)) = self.take() {
            let Calls {
                replies,
                one_replies,
                ..
            } = batch.calls;
            for tx in replies.into_iter().chain(one_replies) {
                let _ = tx.send(Err(gone()));
            }
        }
    }
}

/// Sends the calls queued on a lane (see [`RedisStore::batched`]).
async fn send_batch(mut unsent: Unsent) {
    // Every task ready now runs first, and the calls they make join this batch.
    tokio::task::yield_now().await;
    if let Some((lane, batch)) = unsent.take() {
        send_calls(lane, batch).await;
    }
}

/// Sends a batch as one pipeline and hands each call its reply.
async fn send_calls(lane: Arc<Lane>, batch: Batch) {
    let Batch {
        mut calls,
        deadline,
    } = batch;
    // A call given up (its caller gone) before it was sent is never sent.
    if calls.replies.iter().any(|tx| tx.is_closed()) {
        let mut kept = redis::Pipeline::with_capacity(calls.replies.len());
        let mut waiting = Vec::with_capacity(calls.replies.len());
        for (cmd, tx) in calls.pipe.cmd_iter().zip(calls.replies.drain(..)) {
            if !tx.is_closed() {
                kept.add_command(cmd.clone());
                waiting.push(tx);
            }
        }
        (calls.pipe, calls.replies) = (kept, waiting);
    }
    if calls.one_replies.iter().any(|tx| tx.is_closed()) {
        let ones = std::mem::take(&mut calls.ones);
        let replies = std::mem::take(&mut calls.one_replies);
        for (cmd, tx) in ones.into_iter().zip(replies) {
            if !tx.is_closed() {
                calls.ones.push(cmd);
                calls.one_replies.push(tx);
            }
        }
    }
    // Several one-check calls go as one call of `_n`; one goes as it is.
    let many = match calls.ones.len() {
        0 | 1 => None,
        _ => many_call(&lane.many, &calls.ones),
    };
    if let Some(cmd) = many {
        calls.pipe.add_command(cmd);
    } else {
        for cmd in calls.ones.drain(..) {
            calls.pipe.add_command(cmd);
        }
        calls.replies.append(&mut calls.one_replies);
    }
    if !calls.pipe.is_empty() {
        send_pipeline(
            &lane,
            &calls.pipe,
            &mut calls.replies,
            &mut calls.one_replies,
            deadline,
        )
        .await;
    }
    // Keep the vectors for a later batch.
    calls.clear();
    let mut q = lock(&lane.queue);
    if q.spare.is_none() {
        q.spare = Some(calls);
    }
}

/// One `FCALL <many> numkeys KEYS... ARGV...` for the one-check calls `ones` (each
/// `FCALL <name>_1 numkeys KEYS... spec [seconds nanoseconds]`): their keys in
/// order, then `t` (Redis TIME) or `c` (each check's own instant follows its spec),
/// then each call's arguments. `None` when the calls are not all of that shape or
/// do not agree on the clock (a store's calls always do).
fn many_call(many: &str, ones: &[redis::Cmd]) -> Option<redis::Cmd> {
    /// A call's arguments as bytes (a one-check call has no cursor argument).
    fn args(cmd: &redis::Cmd) -> impl Iterator<Item = &[u8]> {
        cmd.args_iter().map(|a| match a {
            redis::Arg::Simple(bytes) => bytes,
            _ => &[],
        })
    }
    /// A one-check call's number of keys and of arguments after them.
    fn shape(cmd: &redis::Cmd) -> Option<(usize, usize)> {
        let numkeys: usize = std::str::from_utf8(args(cmd).nth(2)?).ok()?.parse().ok()?;
        let rest = args(cmd).count().checked_sub(3 + numkeys)?;
        Some((numkeys, rest))
    }
    let mut shapes: SmallVec<[(usize, usize); BATCH]> = SmallVec::with_capacity(ones.len());
    for cmd in ones {
        shapes.push(shape(cmd)?);
    }
    // One argument (the spec) under Redis TIME, three with the caller's instant;
    // the calls of one store agree.
    let rest = shapes.first()?.1;
    if !(rest == 1 || rest == 3) || shapes.iter().any(|s| s.1 != rest) {
        return None;
    }
    let numkeys: usize = shapes.iter().map(|s| s.0).sum();
    let bytes: usize = ones
        .iter()
        .flat_map(|c| args(c).skip(3))
        .map(<[u8]>::len)
        .sum();
    let mut cmd = redis::Cmd::with_capacity(4 + numkeys + rest * ones.len(), bytes + 64);
    cmd.arg("FCALL").arg(many).arg(numkeys);
    for (one, &(n, _)) in ones.iter().zip(&shapes) {
        for key in args(one).skip(3).take(n) {
            cmd.arg(key);
        }
    }
    cmd.arg(if rest == 3 { "c" } else { "t" });
    for (one, &(n, _)) in ones.iter().zip(&shapes) {
        for arg in args(one).skip(3 + n) {
            cmd.arg(arg);
        }
    }
    Some(cmd)
}

/// Sends `pipe` on the lane's next connection and hands each reply to its caller,
/// giving up at `deadline`: `replies` get the pipeline's replies in order; when
/// `ones` is not empty, the pipeline's last call is one `_n` call for them, and each
/// gets its item of that call's reply.
async fn send_pipeline(
    lane: &Lane,
    pipe: &redis::Pipeline,
    replies: &mut Vec<Reply>,
    ones: &mut Vec<Reply>,
    deadline: Instant,
) {
    let i = lane.next.fetch_add(1, Ordering::Relaxed) % lane.conns.len();
    let mut conn = lane.conns[i].clone();
    let expected = replies.len() + usize::from(!ones.is_empty());
    let sent =
        tokio::time::timeout_at(deadline, conn.send_packed_commands(pipe, 0, expected)).await;
    let fail_all = |replies: &mut Vec<Reply>, ones: &mut Vec<Reply>, e: &dyn Fn() -> RedisError| {
        for tx in replies.drain(..).chain(ones.drain(..)) {
            let _ = tx.send(Err(e()));
        }
    };
    match sent {
        Ok(Ok(mut values)) if values.len() == expected => {
            if !ones.is_empty() {
                // The `_n` call's reply: one item per check, or one error for all.
                match values.pop() {
                    Some(redis::Value::Array(items)) if items.len() == ones.len() => {
                        for (item, tx) in items.into_iter().zip(ones.drain(..)) {
                            let _ = tx.send(Ok(item));
                        }
                    }
                    Some(error @ redis::Value::ServerError(_)) => {
                        for tx in ones.drain(..) {
                            let _ = tx.send(Ok(error.clone()));
                        }
                    }
                    other => {
                        let e =
                            format!("the function answered {other:?} for {} checks", ones.len());
                        for tx in ones.drain(..) {
                            let _ = tx.send(Err(RedisError::Reply(e.clone())));
                        }
                    }
                }
            }
            for (value, tx) in values.into_iter().zip(replies.drain(..)) {
                let _ = tx.send(Ok(value));
            }
        }
        Ok(Ok(values)) => {
            let e = format!(
                "a pipeline of {} calls answered {} replies",
                pipe.len(),
                values.len()
            );
            fail_all(replies, ones, &|| RedisError::Reply(e.clone()));
        }
        Ok(Err(e)) => fail_all(replies, ones, &|| classify(e.clone())),
        Err(_) => fail_all(replies, ones, &|| RedisError::Timeout(lane.timeout)),
    }
}

/// How far a cluster stack got, for its breakers: the slot range whose call was
/// out last, and the ranges that answered. A stack decided slot by slot that fails
/// (a node hangs) counts as a failure only in the range of the call that failed;
/// ranges that answered before count as answered, ranges not reached as neither.
#[derive(Debug)]
struct Progress {
    /// The range of the call out last; `NO_RANGE` before the first.
    out: AtomicUsize,
    /// Bit `r` set: range `r` answered a call.
    answered: AtomicU64,
}

const NO_RANGE: usize = usize::MAX;

impl Default for Progress {
    fn default() -> Self {
        Progress {
            out: AtomicUsize::new(NO_RANGE),
            answered: AtomicU64::new(0),
        }
    }
}

impl Progress {
    fn start(&self, range: usize) {
        self.out.store(range, Ordering::Relaxed);
    }

    fn answered(&self, range: usize) {
        if let Some(bit) = 1_u64.checked_shl(u32::try_from(range).unwrap_or(u32::MAX)) {
            self.answered.fetch_or(bit, Ordering::Relaxed);
        }
    }

    /// What a failed decision tells the breaker of `range`.
    fn outcome(&self, range: usize) -> Outcome {
        let out = self.out.load(Ordering::Relaxed);
        if out == NO_RANGE || out == range {
            // The failing call's range (or, not known, every range).
            return Outcome::Failed;
        }
        let answered = 1_u64
            .checked_shl(u32::try_from(range).unwrap_or(u32::MAX))
            .is_some_and(|bit| self.answered.load(Ordering::Relaxed) & bit != 0);
        if answered {
            Outcome::Answered
        } else {
            Outcome::Neither
        }
    }
}

fn letter(a: Algorithm) -> &'static str {
    match a {
        Algorithm::TokenBucket => "t",
        Algorithm::Gcra => "g",
        Algorithm::LeakyBucket => "k",
        Algorithm::FixedWindow => "f",
        Algorithm::SlidingWindowCounter => "c",
        Algorithm::SlidingWindowLog => "l",
    }
}

fn in_range(p: &Policy) -> Result<(), RedisError> {
    // The window algorithms never use tau; the bucket family never uses W but its
    // T is at most W.
    let tolerance_matters = p.algorithm().is_bucket();
    if p.period() > MAX_DURATION || (tolerance_matters && p.tolerance() > MAX_DURATION) {
        return Err(RedisError::PolicyTooLong {
            period: p.period(),
            tolerance: p.tolerance(),
        });
    }
    Ok(())
}

fn answer(policy: &Policy, f: &[i64]) -> Result<Answer, RedisError> {
    let n = |i: usize| {
        u64::try_from(f[i]).map_err(|_| RedisError::Reply(format!("negative field {i}: {}", f[i])))
    };
    let reason = match f[5] {
        0 => None,
        1 => Some(DenyReason::Limited),
        2 => Some(DenyReason::CostExceedsCapacity),
        other => return Err(RedisError::Reply(format!("unknown reason {other}"))),
    };
    let limit = if policy.algorithm().is_bucket() {
        policy.burst()
    } else {
        policy.limit()
    };
    Ok(Answer {
        decision: Decision {
            allowed: f[0] == 1,
            limit,
            remaining: n(1)?,
            reset_after: Nanos::new(n(2)?),
            retry_after: if f[3] < 0 {
                None
            } else {
                Some(Nanos::new(n(3)?))
            },
            delay: Nanos::new(n(4)?),
            reason,
        },
        view: (n(6)?, Nanos::new(n(7)?)),
    })
}

/// The one-check function's argument for a check: "<mode><algorithm> x y z cost
/// least" (see `lua/tollgate.lua`).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Spec {
    mode: u8,
    algorithm: u8,
    numbers: [u64; 5],
}

thread_local! {
    /// The last spec this thread wrote, and its text: consecutive checks of one
    /// policy (the common case) reuse it instead of writing their numbers again.
    static LAST_SPEC: std::cell::RefCell<(Option<Spec>, Vec<u8>)> =
        const { std::cell::RefCell::new((None, Vec::new())) };
}

impl Spec {
    /// Appends the spec to `cmd` as one argument.
    fn write(&self, cmd: &mut redis::Cmd) {
        LAST_SPEC.with_borrow_mut(|(last, text)| {
            if *last != Some(*self) {
                text.clear();
                text.push(self.mode);
                text.push(self.algorithm);
                for v in self.numbers {
                    text.push(b' ');
                    push_decimal(text, v);
                }
                *last = Some(*self);
            }
            cmd.arg(&text[..]);
        });
    }
}

/// Appends `v` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut v: u64) {
    let mut digits = [0_u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A bucket-family check's answer from the one integer the function answered for it:
/// the wait `w` (how far its TAT was ahead of the instant) if it admitted the request,
/// `-(w + 1)` if it denied it. A bucket decision depends only on the policy, the cost
/// and `w`, so the tollgate crate's own function decides it again here, at an instant
/// where the TAT is `w` ahead, and must agree with the function on admission.
fn bucket_answer(policy: &Policy, cost: NonZeroU32, reply: i64) -> Result<Answer, RedisError> {
    /// Any instant does; this one leaves room for every wait and every `c*T`.
    const BASE: u64 = 1 << 62;
    let admitted = reply >= 0;
    // -(reply + 1) cannot overflow for a negative reply, and is then non-negative.
    let wait = u64::try_from(if admitted { reply } else { -(reply + 1) })
        .map_err(|_| RedisError::Reply(format!("the function answered {reply}")))?;
    let mut state = State::Bucket(Nanos::new(BASE + wait));
    let decision = state.check(policy, Nanos::new(BASE), cost, false);
    if decision.allowed != admitted {
        return Err(RedisError::Reply(format!(
            "the function answered {reply}, which the policy decides the other way"
        )));
    }
    Ok(Answer {
        decision,
        // The view is only read for the other checks of a denied stack.
        view: (decision.remaining, decision.reset_after),
    })
}

/// The answer of FCALL when the library is not loaded.
fn missing_function(e: &redis::RedisError) -> bool {
    e.to_string().contains("Function not found")
}

/// Server answers that prove the command did not run.
fn not_run(e: &redis::RedisError) -> bool {
    matches!(
        e.code(),
        Some("MOVED" | "ASK" | "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN")
    )
}

fn classify(e: redis::RedisError) -> RedisError {
    if e.code().is_some() && !e.is_io_error() {
        RedisError::Server(e)
    } else {
        RedisError::Unavailable(e)
    }
}

impl Store for RedisStore {
    type Error = RedisError;

    fn check(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send {
        self.decide(checks, Mode::Check)
    }

    fn peek(
        &self,
        checks: &[Check<'_>],
    ) -> impl Future<Output = Result<Verdict, Self::Error>> + Send {
        self.decide(checks, Mode::Peek)
    }

    fn reset(&self, key: &str) -> impl Future<Output = Result<(), Self::Error>> + Send {
        self.forget(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_answers_are_the_crate_decisions() {
        let one = NonZeroU32::MIN;
        let p = Policy::new(Algorithm::Gcra, 2, Duration::from_secs(1)).expect("policy");
        // Fresh key: admitted, the TAT now one T ahead.
        let a = bucket_answer(&p, one, 0).expect("admitted");
        assert!(a.decision.allowed);
        assert_eq!(a.decision.remaining, 1);
        assert_eq!(a.decision.reset_after, Nanos::from_millis(500));
        // The TAT a whole tau ahead: denied, retry after one T.
        let tau = i64::try_from(p.tolerance().as_u64()).expect("small");
        let d = bucket_answer(&p, one, -(tau + 1)).expect("denied");
        assert!(!d.decision.allowed);
        assert_eq!(d.decision.retry_after, Some(Nanos::from_millis(500)));
        // Redis and the crate disagreeing is an error, never a decision.
        assert!(bucket_answer(&p, one, tau).is_err());
        assert!(bucket_answer(&p, one, -1).is_err());
        let leaky = Policy::new(Algorithm::LeakyBucket, 2, Duration::from_secs(1))
            .expect("policy")
            .with_burst(3)
            .expect("burst");
        let l = bucket_answer(&leaky, one, 400_000_000).expect("admitted");
        assert_eq!(l.decision.delay, Nanos::new(400_000_000));
    }

    #[test]
    fn a_failed_stack_fails_only_the_range_of_the_call_that_failed() {
        let p = Progress::default();
        // Nothing known yet: every range failed.
        assert_eq!(p.outcome(7), Outcome::Failed);
        p.start(2);
        p.answered(2);
        p.start(63);
        assert_eq!(p.outcome(63), Outcome::Failed, "the call out");
        assert_eq!(p.outcome(2), Outcome::Answered, "answered before");
        assert_eq!(p.outcome(0), Outcome::Neither, "not reached");
        // A give-back sent again to a range that had answered, and out when the
        // stack failed: that range failed.
        p.start(2);
        assert_eq!(p.outcome(2), Outcome::Failed);
        assert_eq!(p.outcome(63), Outcome::Neither);
    }

    #[test]
    fn decimals() {
        for v in [0, 1, 9, 10, 99, 100, 1_000_000_007, u64::MAX] {
            let mut out = Vec::new();
            push_decimal(&mut out, v);
            assert_eq!(out.as_slice(), v.to_string().as_bytes());
        }
    }
}
