//! The seed channels, served on `127.0.0.1:$PORT` (default 4000) at `/socket`.
//!
//! ```text
//! cargo run -p gateway --example seeds
//! ```

mod app;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,gateway=info".into()),
        )
        .init();
    gateway::server::install_panic_hook();
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(4000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!(
        "seeds listening on http://{}/socket",
        listener.local_addr()?
    );
    let endpoint = app::endpoint();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        ep.shutdown();
    });
    gateway::server::serve(listener, endpoint).await?;
    Ok(())
}
