//! Library-level tests that need process-wide settings (`HTTPS_PROXY`, `SSL_CERT_FILE`), kept in
//! their own test binary so they cannot disturb the black-box tests' environment.

mod support;

use std::time::Duration;

use ecr_edge::internal::credentials::Source;
use ecr_edge::internal::ecr::Fetcher;
use ecr_edge::internal::registry::Registry;

use support::Sandbox;

#[test]
fn one_exchange_serves_many_registries_in_one_process() {
    let mut sb = Sandbox::new();
    let (iot, config) = support::iot::device(&mut sb);
    for (k, v) in &sb.vars {
        std::env::set_var(k, v);
    }
    let cfg = ecr_edge::internal::config::parse(&config)
        .unwrap()
        .iot
        .expect("the [iot] section");
    let fetcher = Fetcher::new(&Source::Iot(cfg), "us-west-2", Duration::from_secs(10)).unwrap();
    for host in [
        "123456789012.dkr.ecr.us-west-2.amazonaws.com",
        "210987654321.dkr.ecr.eu-central-1.amazonaws.com",
        "public.ecr.aws",
    ] {
        let token = fetcher.fetch(&Registry::parse(host).unwrap()).unwrap();
        assert_eq!(token.password.expose(), sb.fake.password());
    }
    assert_eq!(iot.calls().len(), 1, "credentials reused across registries");
    let calls = sb.fake.calls();
    assert_eq!(calls.len(), 3);
    assert!(calls
        .iter()
        .all(|c| c.authentic && c.access_key == support::ACCESS_KEY_ID));
}

/// The refresher daemon in this process, driven by tokio's paused clock: hours of backoff and
/// token life pass in milliseconds, with a scripted token source in place of AWS.
mod daemon_time {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ecr_edge::internal::agent::{Reply, Request};
    use ecr_edge::internal::daemon::{run, Start};
    use ecr_edge::internal::ecr::{BoxFuture, FetchError, TokenSource};
    use ecr_edge::internal::registry::Registry;
    use ecr_edge::internal::token::{self, Secret, Token};
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    const REG: &str = "123456789012.dkr.ecr.us-west-2.amazonaws.com";

    /// Tokens of `life` seconds with the current password while the link is up; a reset
    /// connection while it is down. Counts calls.
    struct Scripted {
        link: Mutex<(bool, String)>,
        life: i64,
        calls: AtomicUsize,
        /// How long each fetch takes.
        delay: Duration,
    }

    impl Scripted {
        fn set(&self, up: bool, password: &str) {
            *self.link.lock().unwrap() = (up, password.to_owned());
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl TokenSource for Scripted {
        fn fetch<'a>(&'a self, registry: &'a Registry) -> BoxFuture<'a, Result<Token, FetchError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(self.delay).await;
                let (up, password) = self.link.lock().unwrap().clone();
                if !up {
                    return Err(FetchError::Unreachable {
                        endpoint: registry.endpoint().to_owned(),
                        detail: "connection reset by peer".into(),
                    });
                }
                let now = token::now();
                Ok(Token {
                    password: Secret::new(password),
                    expires_at: now + self.life,
                    fetched_at: now,
                })
            })
        }

        fn credentials(
            &self,
        ) -> BoxFuture<'_, Result<aws_credential_types::Credentials, FetchError>> {
            Box::pin(async {
                Err(FetchError::NoCredentials {
                    detail: "not scripted".into(),
                })
            })
        }
    }

    /// One request over the socket, as the helper sends it; the first reply that is not
    /// `wait`.
    async fn ask(socket: &std::path::Path, request: &Request) -> Reply {
        let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).unwrap();
        line.push(b'\n');
        write.write_all(&line).await.unwrap();
        let mut lines = BufReader::new(read).lines();
        loop {
            let text = lines.next_line().await.unwrap().expect("a reply");
            let reply: Reply = serde_json::from_str(&text).unwrap();
            if reply != Reply::Wait {
                return reply;
            }
        }
    }

    /// The daemon over an upstream outage, in virtual time: the held token is served while it
    /// has 300 s left and never after, retries back off within the cap (no tight loop), and
    /// the first attempt after the link returns brings a fresh token.
    #[tokio::test(start_paused = true)]
    async fn outage_keeps_valid_tokens_never_serves_expired_ones_and_recovers_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        // 330-second tokens: usable (>= 300 s left) for 30 s, refreshed 12-15 s after issue.
        let (source, get, stop, daemon) = start(
            &socket,
            Duration::ZERO,
            330,
            "before-outage",
            "backoff_max = 2\n",
        )
        .await;
        let issued = tokio::time::Instant::now();
        match ask(&socket, &get).await {
            Reply::Token { password, .. } => assert_eq!(password.expose(), "before-outage"),
            other => panic!("{other:?}"),
        }
        assert_eq!(source.calls(), 1);
        source.set(false, "after-outage");

        let (mut served, mut refused) = (0, 0);
        while issued.elapsed() < Duration::from_secs(38) {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let age = issued.elapsed();
            match ask(&socket, &get).await {
                Reply::Token { password, .. } => {
                    assert_eq!(password.expose(), "before-outage");
                    assert!(age <= Duration::from_secs(30), "served {age:?} after issue");
                    served += 1;
                }
                Reply::Error { message } => {
                    assert!(
                        age >= Duration::from_secs(29),
                        "refused at {age:?}: {message}"
                    );
                    assert!(message.contains("connection reset by peer"), "{message}");
                    refused += 1;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(
            served >= 55 && refused >= 14,
            "{served} served, {refused} refused"
        );
        // Retried from the first refresh (12-15 s) on, at most 2 s apart: not a tight loop.
        let attempts = source.calls() - 1;
        assert!((10..=40).contains(&attempts), "{attempts} attempts in 38 s");

        source.set(true, "after-outage");
        let back = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if let Reply::Token { password, .. } = ask(&socket, &get).await {
                assert_eq!(password.expose(), "after-outage");
                break;
            }
            assert!(
                back.elapsed() <= Duration::from_secs(3),
                "not recovered within the cap"
            );
        }
        match ask(&socket, &Request::Status).await {
            Reply::Status(report) => {
                assert_eq!(report.registries[0].last_error, None);
                assert_eq!(report.registries[0].failures, 0);
            }
            other => panic!("{other:?}"),
        }
        stop.send(()).unwrap();
        daemon.await.unwrap().unwrap();
        assert!(!socket.exists(), "socket removed on shutdown");
    }

    /// A daemon on `socket` for `REG` (and `daemon_options`) whose source takes `delay` per
    /// fetch and hands out tokens of `life` seconds with `password`; returns the source, the
    /// request for `REG`, the stop switch and the running task.
    async fn start(
        socket: &std::path::Path,
        delay: Duration,
        life: i64,
        password: &str,
        daemon_options: &str,
    ) -> (
        Arc<Scripted>,
        Request,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), ecr_edge::internal::daemon::DaemonError>>,
    ) {
        let config = ecr_edge::internal::config::parse(&format!(
            "[daemon]\nregistries = [\"{REG}\"]\nsocket = \"{}\"\n{daemon_options}",
            socket.display()
        ))
        .unwrap();
        let identity = ecr_edge::internal::credentials::Source::select(&config).identity();
        let source = Arc::new(Scripted {
            link: Mutex::new((true, password.into())),
            life,
            calls: AtomicUsize::new(0),
            delay,
        });
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(run(
            listener,
            Start {
                config_path: None,
                config,
                source: source.clone(),
                socket: socket.to_owned(),
                deadline: Duration::from_secs(10),
                reload: Arc::new(tokio::sync::Notify::new()),
            },
            async {
                let _ = stopped.await;
            },
        ));
        let get = Request::Get {
            registry: REG.into(),
            identity: identity.to_string(),
        };
        (source, get, stop, task)
    }

    /// `refresh = "on-demand"` (metered links): no upstream call while nothing asks, a token
    /// past its refresh point is served at once while one refresh runs, an expired one is
    /// replaced on request, and after a failure the backoff holds even when asked again.
    #[tokio::test(start_paused = true)]
    async fn on_demand_refresh_makes_no_traffic_while_nothing_asks() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (source, get, stop, task) = start(
            &socket,
            Duration::ZERO,
            43_200,
            "first",
            "refresh = \"on-demand\"\nbackoff_max = 60\n",
        )
        .await;
        let hour = Duration::from_secs(3600);
        let password = |reply: Reply| match reply {
            Reply::Token { password, .. } => password.expose().to_owned(),
            other => panic!("{other:?}"),
        };
        tokio::time::sleep(hour).await;
        assert_eq!(source.calls(), 0, "nothing fetched before anyone asked");
        assert_eq!(password(ask(&socket, &get).await), "first");
        assert_eq!(source.calls(), 1);
        tokio::time::sleep(hour).await;
        assert_eq!(password(ask(&socket, &get).await), "first");
        assert_eq!(source.calls(), 1, "not due yet: served from memory");

        // Past half its life: the held token at once, and one refresh behind it.
        tokio::time::sleep(5 * hour).await;
        source.set(true, "second");
        assert_eq!(password(ask(&socket, &get).await), "first");
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(source.calls(), 2);
        assert_eq!(password(ask(&socket, &get).await), "second");

        // A day with no requests: no traffic; the token has expired meanwhile and the next
        // request waits for a fresh one.
        tokio::time::sleep(24 * hour).await;
        assert_eq!(source.calls(), 2, "no background refresh");
        source.set(true, "third");
        assert_eq!(password(ask(&socket, &get).await), "third");
        assert_eq!(source.calls(), 3);

        // The link is down and the token expired: one attempt, then the backoff holds even
        // though the helper asks again at once.
        tokio::time::sleep(13 * hour).await;
        source.set(false, "fourth");
        assert!(matches!(ask(&socket, &get).await, Reply::Error { .. }));
        assert_eq!(source.calls(), 4);
        assert!(matches!(ask(&socket, &get).await, Reply::Error { .. }));
        assert_eq!(source.calls(), 4, "backoff respected");
        tokio::time::sleep(Duration::from_secs(61)).await;
        source.set(true, "fourth");
        assert_eq!(password(ask(&socket, &get).await), "fourth");
        assert_eq!(source.calls(), 5);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// At most MAX_CONNECTIONS clients are served at once. When every slot holds a client
    /// that has sent nothing, a new client is answered at once and the oldest silent one is
    /// closed; when every slot holds a client with a request under way, the next one waits
    /// until a slot frees, then is answered.
    #[tokio::test(start_paused = true)]
    async fn connections_are_capped_idle_ones_give_way_busy_ones_are_waited_for() {
        use tokio::io::AsyncReadExt;
        let cap = ecr_edge::internal::daemon::MAX_CONNECTIONS;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (source, get, stop, task) =
            start(&socket, Duration::from_secs(5), 43_200, "pw", "").await;
        // The first fetch takes 5 s; let it finish so gets for REG are answered from memory.
        assert!(matches!(ask(&socket, &get).await, Reply::Token { .. }));
        let mut idle = Vec::new();
        for _ in 0..cap {
            idle.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
        }
        // Let the daemon accept them all.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let reply = tokio::time::timeout(Duration::from_secs(1), ask(&socket, &get))
            .await
            .expect("answered at once: a silent client gave way");
        assert!(matches!(reply, Reply::Token { .. }), "{reply:?}");
        let mut oldest = idle.remove(0);
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(1), oldest.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0))),
            "the oldest silent client was closed"
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(10)).await;

        // Every slot busy: clients waiting for an on-demand registry's 5 s fetch.
        let Request::Get { identity, .. } = get.clone() else {
            unreachable!()
        };
        let slow = Request::Get {
            registry: "210987654321.dkr.ecr.eu-central-1.amazonaws.com".into(),
            identity,
        };
        let mut busy = Vec::new();
        for _ in 0..cap {
            let (socket, slow) = (socket.clone(), slow.clone());
            busy.push(tokio::spawn(async move { ask(&socket, &slow).await }));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiting = tokio::spawn({
            let (socket, get) = (socket.clone(), get.clone());
            async move { ask(&socket, &get).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "served beyond the cap");
        let reply = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("answered once a slot was free")
            .unwrap();
        assert!(matches!(reply, Reply::Token { .. }), "{reply:?}");
        for b in busy {
            assert!(matches!(b.await.unwrap(), Reply::Token { .. }));
        }
        assert_eq!(source.calls(), 2);
        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }

    /// Shutdown lets a client that is waiting for a refresh get its token before the daemon
    /// stops (the drain), then removes the socket.
    #[tokio::test(start_paused = true)]
    async fn shutdown_drains_a_client_waiting_for_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let (source, get, stop, task) =
            start(&socket, Duration::from_millis(1500), 43_200, "pw", "").await;
        let other = "210987654321.dkr.ecr.eu-central-1.amazonaws.com";
        let Request::Get { identity, .. } = get.clone() else {
            unreachable!()
        };
        let on_demand = Request::Get {
            registry: other.into(),
            identity,
        };
        let client = tokio::spawn({
            let socket = socket.clone();
            async move { ask(&socket, &on_demand).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!client.is_finished(), "the fetch takes 1.5 s");
        stop.send(()).unwrap();
        let reply = client.await.unwrap();
        assert!(matches!(reply, Reply::Token { .. }), "{reply:?}");
        task.await.unwrap().unwrap();
        assert!(!socket.exists());
        assert!(source.calls() >= 2);
    }
}
