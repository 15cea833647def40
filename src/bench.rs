//! `wallet bench`: a load generator over real HTTP. Filled in by issue 5.

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Target a running server instead of starting one on a temporary database.
    #[arg(long)]
    pub url: Option<String>,
    /// Users to register and fund.
    #[arg(long, default_value_t = 1000)]
    pub users: u32,
    /// Concurrent keep-alive clients.
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Also measure the same transfer code path against SQLite with no HTTP.
    #[arg(long)]
    pub raw: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(_args: &BenchArgs) -> Result<bool, String> {
    Err("bench is not built yet".into())
}
