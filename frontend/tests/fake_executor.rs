//! The frontend end to end over real sockets, against a fake executor that speaks the real
//! protocol (`ExecutorCodec`) and records what it was sent. The real executor is exercised
//! by the workspace's e2e suite; this one pins the frontend's side of the contract.

#[cfg(test)]
mod against_a_fake_executor {
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use futures_util::{SinkExt, StreamExt};
    use nox_frontend::FrontendConfig;
    use nox_protocol::{
        EntryKind, ErrorKind, ExecutorCodec, ExecutorStatus, ExitStatus, FileEntry, FileMeta,
        FileRef, Hello, JobOutcome, JobSpec, JobStarted, Layer, LayerStatus, Limits, Listing,
        OutputChunk, Program, Reply, Request, ResourceUsage, Saved, Stream, WireError,
    };
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpStream, UnixListener};
    use tokio::task::JoinSet;
    use tokio_util::codec::Framed;

    const TOKEN: &str = "test-token-0123456789abcdef";

    /// What the fake executor saw.
    #[derive(Debug, Default)]
    struct Seen {
        connections: usize,
        jobs: Vec<JobSpec>,
        put_chunk_sizes: Vec<usize>,
        uploads_saved: usize,
        uploads_abandoned: usize,
        cancelled: Vec<String>,
        closed_mid_job: Vec<String>,
    }

    struct FakeExecutor {
        seen: Arc<Mutex<Seen>>,
        tasks: JoinSet<()>,
    }

    impl FakeExecutor {
        async fn start(path: &Path, seen: Arc<Mutex<Seen>>) -> FakeExecutor {
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path).unwrap();
            let mut tasks = JoinSet::new();
            let accept_seen = Arc::clone(&seen);
            tasks.spawn(async move {
                let mut connections = JoinSet::new();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    accept_seen.lock().unwrap().connections += 1;
                    let seen = Arc::clone(&accept_seen);
                    connections.spawn(serve_connection(
                        Framed::new(stream, ExecutorCodec::new()),
                        seen,
                    ));
                }
            });
            FakeExecutor { seen, tasks }
        }

        /// Stop accepting and close every connection (an executor restart).
        async fn stop(mut self, path: &Path) -> Arc<Mutex<Seen>> {
            self.tasks.shutdown().await;
            let _ = std::fs::remove_file(path);
            self.seen
        }
    }

    type Conn = Framed<tokio::net::UnixStream, ExecutorCodec>;

    async fn serve_connection(mut conn: Conn, seen: Arc<Mutex<Seen>>) {
        match conn.next().await {
            Some(Ok(Request::Hello(hello))) if hello.version == nox_protocol::PROTOCOL_VERSION => {
                conn.send(Reply::Hello(Hello::new("fake-executor")))
                    .await
                    .unwrap();
            }
            _ => return,
        }
        while let Some(Ok(request)) = conn.next().await {
            let keep_going = match request {
                Request::Status => conn.send(Reply::Status(status())).await.is_ok(),
                Request::Run(spec) => run_job(&mut conn, spec, &seen).await,
                Request::PutStart(start) => upload(&mut conn, start.path, &seen).await,
                Request::Get(file) => download(&mut conn, file).await,
                Request::List(_) => conn
                    .send(Reply::Listing(Listing {
                        entries: vec![FileEntry {
                            path: "a.txt".into(),
                            kind: EntryKind::File,
                            size: 3,
                            modified_ms: 1_700_000_000_000,
                        }],
                        truncated: false,
                    }))
                    .await
                    .is_ok(),
                Request::Delete(file) if file.path == "missing" => conn
                    .send(Reply::Error(WireError::new(
                        ErrorKind::NotFound,
                        "no such file",
                    )))
                    .await
                    .is_ok(),
                Request::Delete(file) => conn.send(Reply::Deleted(file)).await.is_ok(),
                _ => false,
            };
            if !keep_going {
                return;
            }
        }
    }

    fn status() -> ExecutorStatus {
        ExecutorStatus {
            software: "fake-executor 0.1.0".into(),
            uptime_ms: 1234,
            ready: false,
            layers: vec![
                LayerStatus {
                    layer: Layer::Seccomp,
                    active: true,
                    required: true,
                    detail: "filter loaded".into(),
                },
                LayerStatus {
                    layer: Layer::Landlock,
                    active: false,
                    required: true,
                    detail: "ABI 0".into(),
                },
            ],
            jobs_running: 1,
            jobs_queued: 0,
            max_concurrent_jobs: 4,
            max_queued_jobs: 64,
            ceilings: Limits::default(),
        }
    }

    fn outcome(job_id: &str, status: ExitStatus) -> JobOutcome {
        JobOutcome {
            job_id: job_id.into(),
            status,
            timed_out: false,
            limit_hit: None,
            duration_ms: 12,
            usage: ResourceUsage {
                user_ms: 3,
                system_ms: 2,
                max_rss_kib: 9000,
            },
            stdout_bytes: 3,
            stderr_bytes: 4,
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    /// Shell jobs: `sleep` waits for a cancel; `busy` is refused; `killed` dies by SIGKILL;
    /// anything else prints `hi\n` (split inside a UTF-8 sequence: `h`, `i\xc3`, `\xa9\n`)
    /// and `warn` on stderr.
    async fn run_job(conn: &mut Conn, spec: JobSpec, seen: &Mutex<Seen>) -> bool {
        seen.lock().unwrap().jobs.push(spec.clone());
        let job_id = spec.job_id.clone();
        let command = match &spec.program {
            Program::Shell { command } => command.clone(),
            Program::Python { .. } => "python".into(),
        };
        if command == "busy" {
            return conn
                .send(Reply::Error(WireError::new(ErrorKind::Busy, "queue full")))
                .await
                .is_ok();
        }
        let started = Reply::Started(JobStarted {
            job_id: job_id.clone(),
            queued_ms: 0,
            limits: Limits::default(),
        });
        if conn.send(started).await.is_err() {
            return false;
        }
        if command == "sleep" {
            match tokio::time::timeout(Duration::from_secs(10), conn.next()).await {
                Ok(Some(Ok(Request::Cancel))) => seen.lock().unwrap().cancelled.push(job_id),
                Ok(None | Some(Err(_))) => seen.lock().unwrap().closed_mid_job.push(job_id),
                _ => {}
            }
            return false;
        }
        let status = if command == "killed" {
            ExitStatus::Signaled(9)
        } else {
            ExitStatus::Exited(3)
        };
        let chunks: [(Stream, &[u8]); 4] = [
            (Stream::Stdout, b"h"),
            (Stream::Stdout, b"i\xc3"),
            (Stream::Stderr, b"warn"),
            (Stream::Stdout, b"\xa9\n"),
        ];
        for (stream, data) in chunks {
            let chunk = Reply::Output(OutputChunk {
                stream,
                data: data.to_vec(),
            });
            if conn.send(chunk).await.is_err() {
                return false;
            }
        }
        conn.send(Reply::Finished(outcome(&job_id, status)))
            .await
            .is_ok()
    }

    async fn upload(conn: &mut Conn, path: String, seen: &Mutex<Seen>) -> bool {
        let mut bytes = 0u64;
        loop {
            match conn.next().await {
                Some(Ok(Request::PutChunk(data))) => {
                    bytes += data.len() as u64;
                    seen.lock().unwrap().put_chunk_sizes.push(data.len());
                }
                Some(Ok(Request::PutEnd)) => break,
                _ => {
                    seen.lock().unwrap().uploads_abandoned += 1;
                    return false;
                }
            }
        }
        seen.lock().unwrap().uploads_saved += 1;
        conn.send(Reply::Saved(Saved { path, bytes })).await.is_ok()
    }

    /// Files are `N` bytes of `x` where N is the file name (`300000`); `missing` is not found.
    async fn download(conn: &mut Conn, file: FileRef) -> bool {
        let Ok(size) = file.path.parse::<usize>() else {
            return conn
                .send(Reply::Error(WireError::new(
                    ErrorKind::NotFound,
                    "no such file",
                )))
                .await
                .is_ok();
        };
        let start = Reply::FileStart(FileMeta {
            path: file.path.clone(),
            size: size as u64,
        });
        if conn.send(start).await.is_err() {
            return false;
        }
        let data = vec![b'x'; size];
        for piece in data.chunks(nox_protocol::MAX_CHUNK_LEN) {
            if conn.send(Reply::FileChunk(piece.to_vec())).await.is_err() {
                return false;
            }
        }
        conn.send(Reply::FileEnd).await.is_ok()
    }

    /// A running frontend.
    struct Frontend {
        address: std::net::SocketAddr,
        socket: PathBuf,
        _dir: tempfile::TempDir,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: Option<tokio::task::JoinHandle<Result<(), nox_frontend::FrontendError>>>,
    }

    impl Frontend {
        async fn start(adjust: impl FnOnce(&mut FrontendConfig)) -> Frontend {
            let dir = tempfile::tempdir().unwrap();
            let socket = dir.path().join("executor.sock");
            let mut config = FrontendConfig {
                api_token: Some(TOKEN.into()),
                executor_socket: socket.clone(),
                read_credentials_directory: false,
                ..FrontendConfig::default()
            };
            adjust(&mut config);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(nox_frontend::run(listener, config, async move {
                let _ = stopped.await;
            }));
            Frontend {
                address,
                socket,
                _dir: dir,
                stop: Some(stop),
                task: Some(task),
            }
        }

        async fn shutdown(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(task) = self.task.take() {
                tokio::time::timeout(Duration::from_secs(5), task)
                    .await
                    .expect("the frontend stops promptly")
                    .unwrap()
                    .unwrap();
            }
        }
    }

    /// A response read to the end (requests say `Connection: close`).
    #[derive(Debug)]
    struct Reply1 {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply1 {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap_or_else(|error| {
                panic!("{error}: {:?}", String::from_utf8_lossy(&self.body))
            })
        }
    }

    fn raw_request(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut text = format!("{method} {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" || method == "PUT" {
            text.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        text.push_str("\r\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(body);
        bytes
    }

    const AUTH: (&str, &str) = ("Authorization", "Bearer test-token-0123456789abcdef");
    const JSON: (&str, &str) = ("Content-Type", "application/json");

    async fn send(
        front: &Frontend,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply1 {
        let mut stream = TcpStream::connect(front.address).await.unwrap();
        // The server may answer (413) and close before the whole body is written.
        let _ = stream
            .write_all(&raw_request(method, target, headers, body))
            .await;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
            .await
            .expect("response in time");
        parse_response(&raw)
    }

    fn parse_response(raw: &[u8]) -> Reply1 {
        let split = raw
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|line| {
                let (name, value) = line.split_once(':').unwrap();
                (name.trim().to_owned(), value.trim().to_owned())
            })
            .collect();
        let mut body = raw[split + 4..].to_vec();
        let chunked = headers.iter().any(|(name, value)| {
            name.eq_ignore_ascii_case("transfer-encoding") && value == "chunked"
        });
        if chunked {
            body = dechunk(&body);
        }
        Reply1 {
            status,
            headers,
            body,
        }
    }

    fn dechunk(mut raw: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line_end = raw.windows(2).position(|w| w == b"\r\n").unwrap();
            let size =
                usize::from_str_radix(std::str::from_utf8(&raw[..line_end]).unwrap(), 16).unwrap();
            raw = &raw[line_end + 2..];
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&raw[..size]);
            raw = &raw[size + 2..];
        }
    }

    fn error_code(reply: &Reply1) -> String {
        let body = reply.json();
        assert_eq!(body["message"], body["detail"], "{body}");
        assert_eq!(reply.header("content-type"), Some("application/json"));
        body["error"].as_str().unwrap().to_owned()
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn without_an_executor_requests_get_503_quickly_and_service_resumes_when_it_is_back() {
        let front = Frontend::start(|_| {}).await;
        let began = Instant::now();
        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON],
            br#"{"cmd":"echo"}"#,
        )
        .await;
        assert!(began.elapsed() < Duration::from_millis(1500));
        assert_eq!(reply.status, 503);
        assert_eq!(reply.header("retry-after"), Some("1"));
        assert_eq!(error_code(&reply), "executor_unavailable");

        let health = send(&front, "GET", "/health", &[], b"").await;
        assert_eq!(health.status, 503);
        assert_eq!(health.json()["status"], "unavailable");
        assert_eq!(error_code(&health), "executor_unavailable");

        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON],
            br#"{"cmd":"echo"}"#,
        )
        .await;
        assert_eq!(reply.status, 200);
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }

    #[tokio::test]
    async fn health_reports_the_executor_and_its_layers_without_a_token() {
        let front = Frontend::start(|_| {}).await;
        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        let reply = send(&front, "GET", "/health", &[], b"").await;
        assert_eq!(reply.status, 200);
        let body = reply.json();
        assert_eq!(
            body["status"], "degraded",
            "a required layer is inactive: {body}"
        );
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
        let executor = &body["executor"];
        assert_eq!(executor["reachable"], true);
        assert_eq!(executor["ready"], false);
        assert_eq!(executor["software"], "fake-executor 0.1.0");
        assert_eq!(executor["max_queued_jobs"], 64);
        assert_eq!(executor["limits"]["timeout_ms"], 30_000);
        assert_eq!(executor["layers"]["seccomp"]["active"], true);
        assert_eq!(executor["layers"]["landlock"]["detail"], "ABI 0");
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }

    #[tokio::test]
    async fn a_job_reply_has_the_seed_fields_and_the_new_ones() {
        let front = Frontend::start(|_| {}).await;
        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        let body = br#"{"cmd":"echo hi","stdin":"in","timeout_s":2.5,"limits":{"memory_mb":64,"output_kb":1},"extra":1}"#;
        let reply = send(&front, "POST", "/run_sh", &[AUTH, JSON], body).await;
        assert_eq!(reply.status, 200);
        let json = reply.json();
        assert_eq!(json["returncode"], 3);
        assert_eq!(json["stdout"], "hié\n");
        assert_eq!(json["stderr"], "warn");
        assert_eq!(json["timed_out"], false);
        assert_eq!(json["signal"], Value::Null);
        assert_eq!(json["limit_hit"], Value::Null);
        assert_eq!(json["duration_ms"], 12);
        assert_eq!(json["stdout_truncated"], false);
        assert_eq!(json["usage"]["max_rss_kib"], 9000);
        let job_id = json["job_id"].as_str().unwrap().to_owned();
        assert_eq!(job_id.len(), 16);

        // A signal shows as a negative returncode; Python code goes out with its filename.
        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON],
            br#"{"cmd":"killed"}"#,
        )
        .await;
        assert_eq!(
            (
                reply.json()["returncode"].clone(),
                reply.json()["signal"].clone()
            ),
            (Value::from(-9), Value::from(9))
        );
        // No Content-Type at all is accepted, as the seed did.
        let reply = send(
            &front,
            "POST",
            "/run_py",
            &[AUTH],
            br#"{"code":"print(1)"}"#,
        )
        .await;
        assert_eq!(reply.status, 200);

        let seen = fake.stop(&front.socket).await;
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        let first = &seen.jobs[0];
        assert_eq!(first.job_id, job_id);
        assert_eq!(first.workspace, "default");
        assert_eq!(first.stdin, b"in");
        assert_eq!(first.limits.timeout_ms, Some(2500));
        assert_eq!(first.limits.memory_bytes, Some(64 * 1024 * 1024));
        assert_eq!(first.limits.max_output_bytes, Some(1024));
        assert_eq!(
            seen.jobs[2].program,
            Program::Python {
                code: "print(1)".into(),
                filename: "run.py".into()
            }
        );
        assert_eq!(
            seen.connections, 1,
            "one pooled connection served every request"
        );
        front.shutdown().await;
    }

    #[tokio::test]
    async fn output_streams_as_ndjson_or_server_sent_events() {
        let front = Frontend::start(|_| {}).await;
        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON, ("Accept", "application/x-ndjson")],
            br#"{"cmd":"echo hi"}"#,
        )
        .await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/x-ndjson"));
        assert_eq!(reply.header("x-accel-buffering"), Some("no"));
        assert_eq!(reply.header("cache-control"), Some("no-cache"));
        let events: Vec<Value> = String::from_utf8(reply.body)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let kinds: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(
            kinds,
            [
                "started", "stdout", "stdout", "stderr", "stdout", "finished"
            ]
        );
        let stdout: String = events
            .iter()
            .filter(|e| e["type"] == "stdout")
            .map(|e| e["data"].as_str().unwrap())
            .collect();
        assert_eq!(
            stdout, "hié\n",
            "a UTF-8 sequence split across chunks is joined"
        );
        let finished = events.last().unwrap();
        assert_eq!(finished["returncode"], 3);
        assert_eq!(finished["job_id"], events[0]["job_id"]);
        assert!(finished.get("stdout").is_none());

        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON, ("Accept", "text/event-stream")],
            br#"{"cmd":"echo hi"}"#,
        )
        .await;
        assert_eq!(reply.header("content-type"), Some("text/event-stream"));
        let text = String::from_utf8(reply.body).unwrap();
        assert!(text.starts_with("event: started\ndata: {"), "{text}");
        assert!(text.contains("\n\nevent: finished\ndata: {"), "{text}");
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }

    #[tokio::test]
    async fn a_client_that_goes_away_cancels_its_job() {
        let front = Frontend::start(|_| {}).await;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let fake = FakeExecutor::start(&front.socket, Arc::clone(&seen)).await;
        // Streaming: drop the connection after the `started` event.
        let mut stream = TcpStream::connect(front.address).await.unwrap();
        let request = raw_request(
            "POST",
            "/run_sh",
            &[AUTH, JSON, ("Accept", "application/x-ndjson")],
            br#"{"cmd":"sleep"}"#,
        );
        stream.write_all(&request).await.unwrap();
        let mut buffer = vec![0u8; 4096];
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).contains("started") {
            let n = stream.read(&mut buffer).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&buffer[..n]);
        }
        drop(stream);
        eventually("the streamed job is cancelled", || {
            seen.lock().unwrap().cancelled.len() == 1
        })
        .await;

        // One JSON reply: drop the connection while the job runs.
        let mut stream = TcpStream::connect(front.address).await.unwrap();
        let request = raw_request("POST", "/run_sh", &[AUTH, JSON], br#"{"cmd":"sleep"}"#);
        stream.write_all(&request).await.unwrap();
        eventually("the job starts", || seen.lock().unwrap().jobs.len() == 2).await;
        drop(stream);
        eventually("the collected job is cancelled", || {
            seen.lock().unwrap().cancelled.len() == 2
        })
        .await;
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }

    fn multipart(file: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(
            b"--XBOUNDARY\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nignored\r\n",
        );
        body.extend_from_slice(
            b"--XBOUNDARY\r\nContent-Disposition: form-data; name=\"f\"; filename=\"data.bin\"\r\n\
          Content-Type: application/octet-stream\r\n\r\n",
        );
        body.extend_from_slice(file);
        body.extend_from_slice(b"\r\n--XBOUNDARY--\r\n");
        body
    }

    const MULTIPART: (&str, &str) = ("Content-Type", "multipart/form-data; boundary=XBOUNDARY");

    #[tokio::test]
    async fn uploads_are_streamed_in_bounded_chunks_and_oversized_ones_abandoned() {
        let front = Frontend::start(|config| config.max_upload_bytes = 700 * 1024).await;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let fake = FakeExecutor::start(&front.socket, Arc::clone(&seen)).await;

        let file = vec![7u8; 600 * 1024];
        let reply = send(
            &front,
            "POST",
            "/put?path=dir%2Fdata+1.bin",
            &[AUTH, MULTIPART],
            &multipart(&file),
        )
        .await;
        assert_eq!(
            reply.status,
            200,
            "{:?}",
            String::from_utf8_lossy(&reply.body)
        );
        assert_eq!(
            reply.json(),
            serde_json::json!({"saved": "dir/data 1.bin", "bytes": 600 * 1024})
        );
        {
            let seen = seen.lock().unwrap();
            assert!(
                seen.put_chunk_sizes
                    .iter()
                    .all(|&n| n <= nox_protocol::MAX_CHUNK_LEN)
            );
            assert_eq!(seen.put_chunk_sizes.iter().sum::<usize>(), 600 * 1024);
        }

        let reply = send(
            &front,
            "PUT",
            "/files/raw.txt",
            &[AUTH, ("Content-Type", "text/plain")],
            b"abc",
        )
        .await;
        assert_eq!(
            reply.json(),
            serde_json::json!({"saved": "raw.txt", "bytes": 3})
        );

        // Too large: 413, and the executor saw the upload end without PutEnd. The declared
        // length is honest here, so send it chunked to get past the early check.
        let big = vec![1u8; 800 * 1024];
        let mut stream = TcpStream::connect(front.address).await.unwrap();
        let head = "PUT /files/big.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                Authorization: Bearer test-token-0123456789abcdef\r\nTransfer-Encoding: chunked\r\n\r\n";
        stream.write_all(head.as_bytes()).await.unwrap();
        for piece in big.chunks(64 * 1024) {
            let frame = format!("{:x}\r\n", piece.len());
            if stream.write_all(frame.as_bytes()).await.is_err()
                || stream.write_all(piece).await.is_err()
                || stream.write_all(b"\r\n").await.is_err()
            {
                break;
            }
        }
        let _ = stream.write_all(b"0\r\n\r\n").await;
        let mut raw = Vec::new();
        let _ = stream.read_to_end(&mut raw).await;
        let reply = parse_response(&raw);
        assert_eq!(reply.status, 413);
        assert_eq!(error_code(&reply), "payload_too_large");
        eventually("the partial upload is abandoned", || {
            seen.lock().unwrap().uploads_abandoned == 1
        })
        .await;
        assert_eq!(seen.lock().unwrap().uploads_saved, 2);

        // A declared length over the limit is refused before anything is sent on.
        let reply = send(
            &front,
            "POST",
            "/put?path=x",
            &[AUTH, MULTIPART],
            &multipart(&vec![0; 2 * 1024 * 1024]),
        )
        .await;
        assert_eq!(reply.status, 413);

        // Missing path, bad path, missing field.
        let reply = send(&front, "POST", "/put", &[AUTH, MULTIPART], &multipart(b"x")).await;
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (400, "bad_request")
        );
        let reply = send(
            &front,
            "POST",
            "/put?path=..%2Fx",
            &[AUTH, MULTIPART],
            &multipart(b"x"),
        )
        .await;
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (400, "invalid_path")
        );
        let only_note = b"--XBOUNDARY\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nx\r\n--XBOUNDARY--\r\n";
        let reply = send(&front, "POST", "/put?path=x", &[AUTH, MULTIPART], only_note).await;
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (400, "bad_request")
        );
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }

    #[tokio::test]
    async fn files_are_listed_downloaded_and_deleted() {
        let front = Frontend::start(|_| {}).await;
        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        let reply = send(&front, "GET", "/files?prefix=", &[AUTH], b"").await;
        assert_eq!(
            reply.json(),
            serde_json::json!({"files": [{"path": "a.txt", "type": "file", "size": 3, "modified_ms": 1_700_000_000_000u64}], "truncated": false})
        );
        let reply = send(&front, "GET", "/files/300000", &[AUTH], b"").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-length"), Some("300000"));
        assert_eq!(
            reply.header("content-type"),
            Some("application/octet-stream")
        );
        assert_eq!(reply.body.len(), 300_000);
        let reply = send(&front, "GET", "/files/0", &[AUTH], b"").await;
        assert_eq!((reply.status, reply.body.len()), (200, 0));
        let reply = send(&front, "GET", "/files/missing", &[AUTH], b"").await;
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (404, "not_found")
        );
        let reply = send(&front, "DELETE", "/files/dir%2Fa.txt", &[AUTH], b"").await;
        assert_eq!(reply.json(), serde_json::json!({"deleted": "dir/a.txt"}));
        let reply = send(&front, "DELETE", "/files/missing", &[AUTH], b"").await;
        assert_eq!(reply.status, 404);
        let seen = fake.stop(&front.socket).await;
        assert_eq!(
            seen.lock().unwrap().connections,
            1,
            "every exchange returned its connection"
        );
        front.shutdown().await;
    }

    /// Method, target, headers, body, expected status and error code.
    type ErrorCase<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        &'a [u8],
        u16,
        &'a str,
    );

    #[tokio::test]
    async fn bad_requests_get_the_uniform_error_body() {
        let front = Frontend::start(|config| config.max_header_bytes = 2048).await;
        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        let cases: Vec<ErrorCase> = vec![
            (
                "POST",
                "/run_sh",
                vec![JSON],
                br#"{"cmd":"ls"}"#,
                401,
                "unauthorized",
            ),
            (
                "POST",
                "/run_sh",
                vec![("Authorization", "Bearer nope"), JSON],
                b"{}",
                401,
                "unauthorized",
            ),
            ("GET", "/nowhere", vec![AUTH], b"", 404, "not_found"),
            ("GET", "/run_sh", vec![AUTH], b"", 405, "method_not_allowed"),
            (
                "POST",
                "/run_sh",
                vec![AUTH, ("Content-Type", "text/plain")],
                br#"{"cmd":"ls"}"#,
                415,
                "unsupported_media_type",
            ),
            (
                "POST",
                "/run_sh",
                vec![AUTH, JSON],
                b"{not json",
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/run_sh",
                vec![AUTH, JSON],
                br#"{"command":"ls"}"#,
                400,
                "invalid_json",
            ),
            (
                "POST",
                "/run_sh",
                vec![AUTH, JSON],
                br#"{"cmd":"/sbin/reboot now"}"#,
                400,
                "forbidden_command",
            ),
            (
                "POST",
                "/run_sh",
                vec![AUTH, JSON],
                br#"{"cmd":"ls","timeout_s":-1}"#,
                400,
                "bad_request",
            ),
            (
                "POST",
                "/run_py",
                vec![AUTH, JSON],
                br#"{"code":"1","filename":"../x.py"}"#,
                400,
                "invalid_path",
            ),
            (
                "POST",
                "/run_sh",
                vec![AUTH, JSON],
                br#"{"cmd":"busy"}"#,
                503,
                "busy",
            ),
            (
                "GET",
                "/files/%2e%2e/x",
                vec![AUTH],
                b"",
                400,
                "invalid_path",
            ),
            (
                "GET",
                "/files/..%2Fetc",
                vec![AUTH],
                b"",
                400,
                "invalid_path",
            ),
            (
                "GET",
                "/files/%2Fetc%2Fpasswd",
                vec![AUTH],
                b"",
                400,
                "invalid_path",
            ),
            (
                "DELETE",
                "/files/a%00b",
                vec![AUTH],
                b"",
                400,
                "invalid_path",
            ),
            (
                "GET",
                "/files?prefix=..",
                vec![AUTH],
                b"",
                400,
                "invalid_path",
            ),
        ];
        for (method, target, headers, body, status, code) in cases {
            let reply = send(&front, method, target, &headers, body).await;
            assert_eq!(
                reply.status,
                status,
                "{method} {target}: {:?}",
                String::from_utf8_lossy(&reply.body)
            );
            assert_eq!(error_code(&reply), code, "{method} {target}");
            if status == 401 {
                assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
            }
            if status == 405 {
                assert_eq!(reply.header("allow"), Some("POST"));
            }
        }
        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON],
            br#"{"cmd":"reboot"}"#,
        )
        .await;
        assert_eq!(reply.json()["message"], "Forbidden command: reboot");
        let big = "x".repeat(3000);
        let reply = send(&front, "GET", "/files", &[AUTH, ("X-Big", &big)], b"").await;
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (431, "headers_too_large")
        );
        let body = format!(r#"{{"cmd":"{}"}}"#, "x".repeat(5 * 1024 * 1024));
        let reply = send(&front, "POST", "/run_sh", &[AUTH, JSON], body.as_bytes()).await;
        assert_eq!(
            (reply.status, error_code(&reply).as_str()),
            (413, "payload_too_large")
        );
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }

    #[tokio::test]
    async fn an_executor_restart_is_survived_by_retrying_on_a_fresh_connection() {
        let front = Frontend::start(|_| {}).await;
        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON],
            br#"{"cmd":"echo"}"#,
        )
        .await;
        assert_eq!(reply.status, 200);
        fake.stop(&front.socket).await;
        let fake = FakeExecutor::start(&front.socket, Arc::default()).await;
        for target in ["/run_sh", "/run_sh"] {
            let reply = send(&front, "POST", target, &[AUTH, JSON], br#"{"cmd":"echo"}"#).await;
            assert_eq!(
                reply.status,
                200,
                "{:?}",
                String::from_utf8_lossy(&reply.body)
            );
        }
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }

    #[tokio::test]
    async fn several_tokens_map_to_their_own_workspaces() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens");
        std::fs::write(&tokens, "# teams\nteam_b beta-token-0123456789\n").unwrap();
        let front = Frontend::start(|config| config.token_files = vec![tokens]).await;
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let fake = FakeExecutor::start(&front.socket, Arc::clone(&seen)).await;
        let auth_b = ("authorization", "bearer   beta-token-0123456789");
        let reply = send(
            &front,
            "POST",
            "/run_sh",
            &[auth_b, JSON],
            br#"{"cmd":"echo"}"#,
        )
        .await;
        assert_eq!(reply.status, 200);
        send(
            &front,
            "POST",
            "/run_sh",
            &[AUTH, JSON],
            br#"{"cmd":"echo"}"#,
        )
        .await;
        let workspaces: Vec<String> = seen
            .lock()
            .unwrap()
            .jobs
            .iter()
            .map(|j| j.workspace.clone())
            .collect();
        assert_eq!(workspaces, ["team_b", "default"]);
        fake.stop(&front.socket).await;
        front.shutdown().await;
    }
}
