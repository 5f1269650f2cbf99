//! The connection plans of the coordinated scenarios (`fanout`, `many-channels`, `direct`,
//! `idle`, `connect`): which connections subscribe to what, which publish where, and the
//! rate steps. Pure data; the coordinator in `main.rs` splits a plan across workers.

use crate::worker::{Dest, PubSpec, Step, SubSpec};

/// The connection plan of a scenario.
pub struct Plan {
    pub name: &'static str,
    pub subs: Vec<SubSpec>,
    pub pubs: Vec<PubSpec>,
    pub steps: Vec<Step>,
    /// Receivers per message (for expected deliveries).
    pub fanout: u64,
    pub churn_per_sec: f64,
    pub churn_channel: Option<String>,
    pub track_last: bool,
    /// Track deliveries across receivers (queue groups; see `WorkerSpec::union_track`).
    pub union_track: bool,
}

/// One step per rate; `rates` are totals, split over `publishers`.
pub(crate) fn steps(rates: &[f64], publishers: f64, step_secs: f64) -> Vec<Step> {
    rates
        .iter()
        .map(|&r| Step {
            rate_per_pub: r / publishers,
            secs: step_secs,
        })
        .collect()
}

impl Plan {
    /// One channel × `subscribers`, one publisher, one step per rate, optional churn.
    pub fn fanout(
        channel: &str,
        subscribers: usize,
        rates: &[f64],
        step_secs: f64,
        churn_per_sec: f64,
    ) -> Plan {
        Plan {
            name: "fanout",
            subs: (0..subscribers)
                .map(|i| SubSpec {
                    peer: format!("sub-{i}"),
                    channel: Some(channel.into()),
                    ..Default::default()
                })
                .collect(),
            pubs: vec![PubSpec {
                peer: "pub-0".into(),
                g: 0,
                dest: Dest::Channel(channel.into()),
            }],
            steps: rates
                .iter()
                .map(|&r| Step {
                    rate_per_pub: r,
                    secs: step_secs,
                })
                .collect(),
            fanout: subscribers as u64,
            churn_per_sec,
            churn_channel: Some(channel.into()),
            track_last: true,
            union_track: false,
        }
    }

    /// `channels` × `subscribers_per_channel`, one publisher per channel; each rate is
    /// the total, split evenly.
    pub fn many_channels(
        channels: usize,
        subscribers_per_channel: usize,
        rates: &[f64],
        step_secs: f64,
    ) -> Plan {
        Plan {
            name: "many-channels",
            subs: (0..channels * subscribers_per_channel)
                .map(|i| SubSpec {
                    peer: format!("sub-{i}"),
                    channel: Some(format!("ch-{}", i % channels)),
                    ..Default::default()
                })
                .collect(),
            pubs: (0..channels)
                .map(|j| PubSpec {
                    peer: format!("pub-{j}"),
                    g: j as u32,
                    dest: Dest::Channel(format!("ch-{j}")),
                })
                .collect(),
            steps: steps(rates, channels as f64, step_secs),
            fanout: subscribers_per_channel as u64,
            churn_per_sec: 0.0,
            churn_channel: None,
            track_last: false,
            union_track: false,
        }
    }

    /// `pairs` sender → receiver pairs (direct messages); each rate is the total.
    pub fn direct(pairs: usize, rates: &[f64], step_secs: f64) -> Plan {
        Plan {
            name: "direct",
            subs: (0..pairs)
                .map(|i| SubSpec {
                    peer: format!("rx-{i}"),
                    channel: None,
                    ..Default::default()
                })
                .collect(),
            pubs: (0..pairs)
                .map(|j| PubSpec {
                    peer: format!("tx-{j}"),
                    g: j as u32,
                    dest: Dest::Peer(format!("rx-{j}")),
                })
                .collect(),
            steps: steps(rates, pairs as f64, step_secs),
            fanout: 1,
            churn_per_sec: 0.0,
            churn_channel: None,
            track_last: false,
            union_track: false,
        }
    }

    /// `connections` subscribed connections (round robin over `channels`) held open.
    pub fn idle(connections: usize, channels: usize) -> Plan {
        Plan {
            name: "idle",
            subs: (0..connections)
                .map(|i| SubSpec {
                    peer: format!("idle-{i}"),
                    channel: Some(format!("idle-{}", i % channels.max(1))),
                    ..Default::default()
                })
                .collect(),
            pubs: vec![],
            steps: vec![],
            fanout: 0,
            churn_per_sec: 0.0,
            churn_channel: None,
            track_last: false,
            union_track: false,
        }
    }

    /// `connections` connections opened (and subscribed) as fast as allowed.
    pub fn connect(connections: usize) -> Plan {
        Plan {
            name: "connect",
            subs: (0..connections)
                .map(|i| SubSpec {
                    peer: format!("conn-{i}"),
                    channel: Some("setup".into()),
                    ..Default::default()
                })
                .collect(),
            pubs: vec![],
            steps: vec![],
            fanout: 0,
            churn_per_sec: 0.0,
            churn_channel: None,
            track_last: false,
            union_track: false,
        }
    }
}
