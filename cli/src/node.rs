//! `cairn node`: data servers as shard 0's cluster map holds them, and the
//! operator's states (active, draining, removed; see metad's `cluster.rs`).

use anyhow::bail;
use clap::Subcommand;

use cairn_client::Client;
use cairn_proto::pb;
use cairn_proto::pb::DataNodeState;

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Every data server: state, liveness, chains it is in (syncing ones too).
    List,
    /// Stop placing data on a server; each chain it is in gets a replacement
    /// and drops it once the replacement is in sync. `node list` shows it
    /// empty (in 0 chains) when done.
    Drain { id: u64 },
    /// Take a drained server (in no chain) out of the cluster; its heartbeats
    /// are refused from then on.
    Remove { id: u64 },
    /// Place data on a server again (undoes drain and remove).
    Activate { id: u64 },
}

pub async fn run(seeds: Vec<String>, command: NodeCommand) -> anyhow::Result<()> {
    let client = Client::new(seeds);
    let (id, state) = match command {
        NodeCommand::List => return list(&client).await,
        NodeCommand::Drain { id } => (id, DataNodeState::DataNodeDraining),
        NodeCommand::Remove { id } => (id, DataNodeState::DataNodeRemoved),
        NodeCommand::Activate { id } => (id, DataNodeState::DataNodeActive),
    };
    client.meta.set_data_node_state(id, state).await?;
    println!("data node {id}: {}", state_name(state as i32));
    Ok(())
}

fn state_name(state: i32) -> &'static str {
    match DataNodeState::try_from(state) {
        Ok(DataNodeState::DataNodeActive) => "active",
        Ok(DataNodeState::DataNodeDraining) => "draining",
        Ok(DataNodeState::DataNodeRemoved) => "removed",
        Err(_) => "unknown",
    }
}

async fn list(client: &Client) -> anyhow::Result<()> {
    let map = client.meta.refresh_map().await?;
    if map.data_nodes.is_empty() {
        bail!("no data nodes registered");
    }
    println!(
        "{:>4}  {:<22} {:<9} {:<5} {:>7} {:>8} {:>14}",
        "id", "address", "state", "live", "chains", "syncing", "used bytes"
    );
    for n in &map.data_nodes {
        let member = |g: &&pb::PlacementGroup| g.chain.contains(&n.id);
        let chains = map.groups.iter().filter(member).count();
        let syncing = map
            .groups
            .iter()
            .filter(|g| g.syncing.contains(&n.id))
            .count();
        println!(
            "{:>4}  {:<22} {:<9} {:<5} {:>7} {:>8} {:>14}",
            n.id,
            n.addr,
            state_name(n.state),
            if n.alive { "up" } else { "DOWN" },
            chains,
            syncing,
            n.used_bytes
        );
    }
    Ok(())
}
