//! The rig of the real-browser tests (`tests/browser/`): the simulated
//! backend and a sidecar in front of it, both on loopback port 0, driven over
//! stdin/stdout by the node test runner.
//!
//! Prints one JSON line with the addresses once both serve:
//! `{"client": "http://…", "stream": "ws://…", "admin": "http://…",
//! "sim": "http://…", "jwtSecret": "…", "adminToken": "…"}`. Then reads
//! commands, one per line, and answers each with one JSON line:
//! * `restart` — shut the sidecar down (streams close with 1001) and start a
//!   new one on the same two addresses: `{"restarted": true}`;
//! * `quit` or end of input — shut both down and exit.
//!
//! Tokens are minted by the tests themselves (HS256 with `jwtSecret`), so
//! they can choose org and lifetime; events are published through the
//! simulator's control API (`POST /_sim/publish`).

use std::time::Duration;

use realtime_edge::config::{Config, EnvSecrets};
use realtime_edge::{Listeners, Sidecar};
use realtime_edge_sim::{SimConfig, Simulator};
use tokio::io::{AsyncBufReadExt, BufReader};

const JWT_SECRET: &str = "browser-test-secret";
const ADMIN_TOKEN: &str = "browser-test-admin";

fn sidecar_config(backend: &str, listen: &str, admin: &str) -> anyhow::Result<Config> {
    let yaml = format!(
        "listen: \"{listen}\"\nadmin_listen: \"{admin}\"\n\
         auth: {{jwt_secret: \"{JWT_SECRET}\", admin_token: \"{ADMIN_TOKEN}\"}}\n\
         upstream: {{base_url: \"{backend}\", native_fallback_s: 2}}\n\
         flags: {{file: null}}\n\
         stream: {{batch_window_ms: 20}}\n"
    );
    Ok(Config::from_yaml(
        "<browser rig>",
        &yaml,
        &EnvSecrets::default(),
    )?)
}

async fn start_sidecar(cfg: Config) -> anyhow::Result<Sidecar> {
    let listeners = Listeners::bind(&cfg).await?;
    Ok(Sidecar::start(cfg, listeners).await?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let sim = Simulator::start(
        SimConfig {
            jwt_secret: JWT_SECRET.into(),
            hold: Duration::from_secs(25),
            ping_interval: Duration::from_secs(5),
            ..SimConfig::default()
        },
        realtime_edge::http_server::bind(([127, 0, 0, 1], 0).into())?,
    )
    .await?;
    let mut sidecar = start_sidecar(sidecar_config(
        &sim.base_url(),
        "127.0.0.1:0",
        "127.0.0.1:0",
    )?)
    .await?;
    let (client, admin) = (sidecar.client_addr, sidecar.admin_addr);
    println!(
        "{}",
        serde_json::json!({
            "client": format!("http://{client}"),
            "stream": format!("ws://{client}/v2/realtime/stream"),
            "admin": format!("http://{admin}"),
            "sim": sim.base_url(),
            "jwtSecret": JWT_SECRET,
            "adminToken": ADMIN_TOKEN,
        })
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match line.trim() {
            "restart" => {
                sidecar.shutdown().await;
                sidecar = start_sidecar(sidecar_config(
                    &sim.base_url(),
                    &client.to_string(),
                    &admin.to_string(),
                )?)
                .await?;
                println!("{}", serde_json::json!({"restarted": true}));
            }
            "quit" => break,
            "" => {}
            other => println!(
                "{}",
                serde_json::json!({"error": format!("unknown command {other:?}")})
            ),
        }
    }
    sidecar.shutdown().await;
    sim.shutdown().await;
    Ok(())
}
