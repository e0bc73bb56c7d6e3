//! The child processes of a benchmark: the sidecar under test (with its
//! memory and CPU read from /proc) and the stream-client workers.

use super::*;

/// The sidecar under test, as a child process.
pub(super) struct SidecarProcess {
    pub(super) child: Child,
    pub(super) client_addr: SocketAddr,
    pub(super) admin_addr: SocketAddr,
    pub(super) _dir: TempDir,
}

pub(super) struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(super) async fn free_port() -> Result<SocketAddr, BenchError> {
    let l = TcpListener::bind("127.0.0.1:0").await?;
    Ok(l.local_addr()?)
}

pub(super) async fn http_get(url: &str) -> Option<(u16, String)> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(url).body(Empty::new()).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

impl SidecarProcess {
    pub(super) async fn spawn(exe: &PathBuf, backend: &str) -> Result<SidecarProcess, BenchError> {
        Self::spawn_with(exe, backend, "").await
    }

    /// Like `spawn`, with `extra` YAML appended to the config.
    pub(super) async fn spawn_with(
        exe: &PathBuf,
        backend: &str,
        extra: &str,
    ) -> Result<SidecarProcess, BenchError> {
        let dir = std::env::temp_dir().join(format!(
            "re-bench-{}-{}",
            std::process::id(),
            realtime_edge::clock::unix_millis()
        ));
        std::fs::create_dir_all(&dir)?;
        let client_addr = free_port().await?;
        let admin_addr = free_port().await?;
        let config = dir.join("edge.yaml");
        std::fs::write(
            &config,
            format!(
                "listen: \"{client_addr}\"\nadmin_listen: \"{admin_addr}\"\nauth: {{jwt_secret: \"{SECRET}\"}}\nflags: {{file: null}}\n{}{}{extra}",
                // `extra` may bring its own upstream or stream section.
                if extra.contains("upstream:") {
                    String::new()
                } else {
                    format!("upstream: {{base_url: \"{backend}\"}}\n")
                },
                if extra.contains("stream:") {
                    ""
                } else {
                    "stream: {max_connections: 18000}\n"
                },
            ),
        )?;
        let child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "warn")
            .env_remove("REALTIME_EDGE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let me = SidecarProcess {
            child,
            client_addr,
            admin_addr,
            _dir: TempDir(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(&format!("http://{admin_addr}/readyz")).await {
                return Ok(me);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(step("the sidecar did not become ready"))
    }

    pub(super) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub(super) fn rss_kib(&self) -> u64 {
        self.pid().and_then(proc_rss_kib).unwrap_or(0)
    }

    pub(super) fn cpu_ticks(&self) -> u64 {
        self.pid().and_then(proc_cpu_ticks).unwrap_or(0)
    }

    pub(super) async fn set_flags(&self, form: &str) -> Result<(), BenchError> {
        realtime_edge_tools::admin_client::request(
            &format!("http://{}", self.admin_addr),
            None,
            http::Method::POST,
            "/feature-flags",
            Some(form.to_string()),
        )
        .await
        .map(|_| ())
        .map_err(|e| step(e.to_string()))
    }

    pub(super) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}

pub(super) fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// utime + stime, in clock ticks (1/100 s on Linux).
pub(super) fn proc_cpu_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = s.rsplit_once(')')?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

pub(super) const TICKS_PER_SEC: f64 = 100.0;

/// A `bench-worker` child holding some of the clients.
pub(super) struct WorkerProcess {
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
}

pub(super) struct WorkerReport {
    pub(super) connected: u64,
    pub(super) failed: u64,
    pub(super) closed: u64,
    pub(super) events: u64,
    pub(super) hist: Vec<u64>,
}

impl WorkerProcess {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn spawn(
        exe: &PathBuf,
        target: SocketAddr,
        source_ip: &str,
        clients: usize,
        org_start: u64,
        org_count: u64,
        services: &[&str],
    ) -> Result<WorkerProcess, BenchError> {
        let mut child = Command::new(exe)
            .arg("bench-worker")
            .args([
                "--target",
                &target.to_string(),
                "--secret",
                SECRET,
                "--source-ip",
                source_ip,
            ])
            .args([
                "--clients",
                &clients.to_string(),
                "--org-start",
                &org_start.to_string(),
                "--org-count",
                &org_count.to_string(),
            ])
            .args(["--services", &services.join(",")])
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| step("worker stdin"))?;
        let stdout =
            BufReader::new(child.stdout.take().ok_or_else(|| step("worker stdout"))?).lines();
        Ok(WorkerProcess {
            child,
            stdin,
            stdout,
        })
    }

    /// The latency and load runs' clients: `o.clients` over `o.orgs` orgs,
    /// subscribed to the three generated services.
    pub(super) async fn standard(
        exe: &PathBuf,
        sidecar: &SidecarProcess,
        o: &BenchOptions,
    ) -> Result<WorkerProcess, BenchError> {
        WorkerProcess::spawn(
            exe,
            sidecar.client_addr,
            "127.0.0.2",
            o.clients,
            1,
            o.orgs,
            &SERVICES,
        )
        .await
    }

    pub(super) async fn command(&mut self, line: &str) -> Result<(), BenchError> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    pub(super) async fn report(&mut self) -> Result<WorkerReport, BenchError> {
        self.command("report").await?;
        let line = tokio::time::timeout(Duration::from_secs(30), self.stdout.next_line())
            .await
            .map_err(|_| step("worker did not report"))??
            .ok_or_else(|| step("worker exited"))?;
        let v: Value =
            serde_json::from_str(&line).map_err(|e| step(format!("worker report: {e}")))?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        Ok(WorkerReport {
            connected: n("connected"),
            failed: n("failed"),
            closed: n("closed"),
            events: n("events"),
            hist: v["hist"]
                .as_array()
                .map(|a| a.iter().map(|x| x.as_u64().unwrap_or(0)).collect())
                .unwrap_or_default(),
        })
    }

    /// Waits until every client is connected (or failed).
    pub(super) async fn wait_connected(&mut self, want: usize) -> Result<u64, BenchError> {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let r = self.report().await?;
            if (r.connected + r.failed) as usize >= want {
                if r.failed > 0 {
                    return Err(step(format!(
                        "{} of {want} clients failed to connect",
                        r.failed
                    )));
                }
                return Ok(r.connected);
            }
            if Instant::now() > deadline {
                return Err(step(format!(
                    "only {} of {want} clients connected",
                    r.connected
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(super) async fn quit(mut self) {
        let _ = self.command("quit").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }
}
