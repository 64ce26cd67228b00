//! `tollgate serve`: load the configuration, connect the store, serve until SIGTERM
//! or SIGINT, then finish the requests in flight and exit.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tollgate::MemoryStore;
use tollgate_envoy::proto::rate_limit_service_server::RateLimitServiceServer;
use tollgate_envoy::{EnvoyMetrics, RateLimiter, RuleSet};
use tollgate_redis::RedisStore;

use crate::app::{AppState, app};
use crate::backend::Backend;
use crate::cli::ServeArgs;
use crate::config::{self, Config, EnvoyConfig, Flags, redact};

/// Why the server stopped early.
#[derive(Debug)]
pub enum ServeError {
    /// Invalid configuration (exit status 2).
    Config(config::ConfigError),
    /// The store, the listener or the runtime failed (exit status 1).
    Runtime(String),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Config(e) => write!(f, "invalid configuration: {e}"),
            ServeError::Runtime(e) => f.write_str(e),
        }
    }
}

impl ServeError {
    /// The process exit status.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::Config(_) => 2,
            ServeError::Runtime(_) => 1,
        }
    }
}

/// Loads the configuration from `flags` and the process environment.
pub fn configuration(flags: &Flags) -> Result<Config, ServeError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    config::load(flags, &env).map_err(ServeError::Config)
}

/// Connects the configured store.
pub async fn backend(config: &Config) -> Result<Backend, ServeError> {
    let s = &config.store;
    if s.url == "memory://" {
        return Ok(Backend::memory(
            MemoryStore::builder().max_keys(s.max_keys).build(),
        ));
    }
    // Lazy: the server starts while Redis is down (on_error answers, /readyz says 503)
    // and uses it once it is up. A cluster is connected now: its client needs the
    // slot map.
    let store = RedisStore::builder(s.url.clone())
        .key_prefix(s.key_prefix.clone())
        .timeout(s.timeout)
        .connect_timeout(Duration::from_secs(5))
        .lazy(true)
        .connect()
        .await
        .map_err(|e| {
            ServeError::Runtime(format!("cannot use the store at {}: {e}", redact(&s.url)))
        })?;
    if let Err(e) = store.ping().await {
        tracing::warn!(
            store = %redact(&s.url),
            error = %e,
            "the store does not answer yet: /readyz answers 503 and on_error decides until it does"
        );
    }
    Ok(Backend::redis(store))
}

/// Runs the server until a shutdown signal.
pub fn run(args: &ServeArgs) -> Result<(), ServeError> {
    let flags = Flags {
        config: args.config.clone(),
        port: args.port,
    };
    let config = configuration(&flags)?;
    init_logs(args.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(serve(config, shutdown_signal()))
}

/// Serves `config` until `shutdown` completes, then drains.
pub async fn serve(
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    for note in &config.notes {
        tracing::info!("{note}");
    }
    let mut backend = backend(&config).await?;
    backend
        .metrics
        .prepare(config.policies.iter().map(|p| p.name.as_str()));
    let envoy = match &config.envoy {
        Some(e) => Some(envoy_rules(&config, e, &mut backend)?),
        None => None,
    };
    let listen = config.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServeError::Runtime(format!("cannot listen on {listen}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| ServeError::Runtime(format!("cannot read the listening address: {e}")))?;
    let grpc_listener = match &config.envoy {
        Some(e) => {
            let at = e.listen;
            let l = TcpListener::bind(at).await.map_err(|err| {
                ServeError::Runtime(format!(
                    "cannot listen on {at} for the Envoy rate limit service: {err}"
                ))
            })?;
            let addr = l.local_addr().map_err(|err| {
                ServeError::Runtime(format!("cannot read the gRPC listening address: {err}"))
            })?;
            Some((l, addr))
        }
        None => None,
    };
    tracing::info!(
        listen = %local,
        grpc_listen = %grpc_listener.as_ref().map_or_else(|| "(off)".to_owned(), |(_, a)| a.to_string()),
        store = %redact(&config.store.url),
        preset = config.preset.map(|p| p.name()).unwrap_or("(none: policies from the file)"),
        policies = %config.policies.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
        "tollgate is serving"
    );
    // One shutdown signal for both listeners.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let state = Arc::new(AppState::new(config, backend));
    let grpc = match (envoy, grpc_listener) {
        (Some(rules), Some((l, _))) => Some(tokio::spawn(serve_grpc(
            l,
            Arc::clone(&state),
            rules,
            stopped(stop_rx.clone()),
        ))),
        _ => None,
    };
    let router = app(state)
        .map_err(|e| ServeError::Runtime(format!("cannot build the protected routes: {e}")))?;
    serve_connections(listener, router, stopped(stop_rx)).await;
    if let Some(grpc) = grpc
        && let Err(e) = grpc.await
    {
        tracing::warn!("the gRPC listener's task failed: {e}");
    }
    tracing::info!("tollgate stopped: every request in flight was answered");
    Ok(())
}

/// Completes once the shutdown signal has been seen.
async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens after it sent.
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The Envoy service's rules, loaded and watched, and its metrics registered.
struct EnvoyRules {
    rules: Arc<ArcSwap<RuleSet>>,
    metrics: EnvoyMetrics,
    shadow_mode: bool,
    options: tollgate_envoy::LoadOptions,
}

fn envoy_rules(
    config: &Config,
    envoy: &EnvoyConfig,
    backend: &mut Backend,
) -> Result<EnvoyRules, ServeError> {
    let options = config::envoy_options(config);
    let metrics = EnvoyMetrics::new();
    let (set, seen) = tollgate_envoy::reload::initial(&envoy.config_dir, &options, &metrics)
        .map_err(|e| ServeError::Config(config::envoy_error(e)))?;
    tracing::info!(
        dir = %envoy.config_dir.display(),
        domains = %set.domain_names().join(","),
        rules = set.rules(),
        shadow_mode = envoy.shadow_mode,
        "Envoy rate limit configuration loaded"
    );
    metrics.register(backend.metrics.registry_mut());
    // The store counts decisions by policy part: make the rules' counters now, so a
    // call does not allocate its labels.
    backend.metrics.prepare(set.store_policies());
    let rules = Arc::new(ArcSwap::from_pointee(set));
    tollgate_envoy::reload::watch(
        envoy.config_dir.clone(),
        options.clone(),
        metrics.clone(),
        &rules,
        seen,
        envoy.reload_interval,
    )
    .map_err(|e| ServeError::Runtime(format!("cannot start the configuration watcher: {e}")))?;
    Ok(EnvoyRules {
        rules,
        metrics,
        shadow_mode: envoy.shadow_mode,
        options,
    })
}

/// Serves `envoy.service.ratelimit.v3.RateLimitService` and the standard gRPC
/// health service until `shutdown`, then lets the calls in flight finish.
///
/// The services are tonic's generated ones, served over HTTP/2 by hyper directly
/// with a two-way path match ([`GrpcRoutes`]), not by tonic's `Server`, whose router
/// and per-request layers (an axum `Router`, connect-info, tracing) this listener
/// does not need; and so its connections shut down as the HTTP listener's do.
async fn serve_grpc(
    listener: TcpListener,
    state: Arc<AppState>,
    envoy: EnvoyRules,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let limiter = RateLimiter::new(Arc::clone(&state.backend), envoy.rules, envoy.metrics)
        .shadow_mode(envoy.shadow_mode)
        .options(envoy.options);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<RateLimitServiceServer<RateLimiter<Backend>>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let routes = GrpcRoutes {
        ratelimit: RateLimitServiceServer::new(limiter),
        health: health_service,
    };
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // gRPC needs no Date header; larger windows mean fewer WINDOW_UPDATE frames.
        .auto_date_header(false)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    let mut shutdown = pin!(shutdown);
    while let Some((stream, peer)) = accept(&listener, shutdown.as_mut(), "gRPC ").await {
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(routes.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "gRPC connection ended: {e}");
            }
        });
    }
    drop(listener);
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<RateLimitServiceServer<RateLimiter<Backend>>>()
        .await;
    graceful.shutdown().await;
}

/// The gRPC listener's two services, told apart by the path's service name.
#[derive(Clone)]
struct GrpcRoutes<H> {
    ratelimit: RateLimitServiceServer<RateLimiter<Backend>>,
    health: H,
}

impl<H> fmt::Debug for GrpcRoutes<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("GrpcRoutes")
    }
}

type GrpcResponse = http::Response<tonic::body::Body>;

impl<H> tonic::codegen::Service<http::Request<Incoming>> for GrpcRoutes<H>
where
    H: tonic::codegen::Service<
            http::Request<Incoming>,
            Response = GrpcResponse,
            Error = Infallible,
            Future = tonic::codegen::BoxFuture<GrpcResponse, Infallible>,
        >,
{
    type Response = GrpcResponse;
    type Error = Infallible;
    type Future = tonic::codegen::BoxFuture<GrpcResponse, Infallible>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        // Both generated services are always ready.
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Incoming>) -> Self::Future {
        if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            self.health.call(request)
        } else {
            // Any other path, this service's or not: the generated service answers
            // an unknown method with UNIMPLEMENTED.
            self.ratelimit.call(request)
        }
    }
}

/// How long a client has to send a request's headers, counted from when the server
/// starts waiting for them (a new connection, or an idle keep-alive one); then the
/// connection is closed. Without it a client sending its headers a byte at a time
/// (slowloris), or opening connections and sending nothing, holds them forever:
/// hyper's own 30 s default needs a timer, which `axum::serve` does not give it.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The pause after a failed `accept` (out of file descriptors, say) before the next
/// one, so the loop does not spin while connections close.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts HTTP/1 connections until `shutdown` completes, then lets each
/// connection finish its request in flight and waits for all of them. Each request
/// carries `ConnectInfo<SocketAddr>`, the peer address the key extractors read.
async fn serve_connections(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    let mut shutdown = pin!(shutdown);
    while let Some((stream, peer)) = accept(&listener, shutdown.as_mut(), "").await {
        let tower = TowerToHyperService::new(router.clone());
        let service = hyper::service::service_fn(move |mut request: http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            hyper::service::Service::call(&tower, request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The next connection of `listener`, or `None` once `shutdown` completes. A failed
/// `accept` (out of file descriptors, say) is logged and retried after
/// `ACCEPT_BACKOFF`.
async fn accept(
    listener: &TcpListener,
    mut shutdown: Pin<&mut impl Future<Output = ()>>,
    kind: &str,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    tracing::warn!("cannot accept a {kind}connection: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = shutdown.as_mut() => return None,
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TOLLGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a person at a terminal, never into a log file or a pipe.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal: finishing the requests in flight");
}
