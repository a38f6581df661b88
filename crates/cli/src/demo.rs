//! The demo upstream: the fixture MCP server's friendly tools on stdio.

pub async fn run() -> anyhow::Result<()> {
    portcullis_fixture::serve_stdio(portcullis_fixture::FixtureOptions {
        demo: true,
        ..Default::default()
    })
    .await
}
