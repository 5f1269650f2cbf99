//! Fan-out: the one way a publication reaches every shard, used by a shard publishing for
//! one of its connections and by the REST thread alike.
//!
//! All or nothing: if any destination's mesh queue is over `max_cross_shard_bytes`
//! ([`Mesh::all_have_room`]) nothing is built, delivered or queued, and the caller answers
//! "busy" (`rate_limited` on a WebSocket, 503 on REST). Otherwise the publication is built
//! once, delivered to the publishing shard's own subscribers (if it is a shard) and pushed
//! as one `Arc` to every other shard, which delivers the same bytes to its subscribers.

use std::sync::Arc;

use super::{
    mesh::{Mesh, Source},
    Publication, ShardId, ShardMsg,
};

/// A destination shard's queue is over its bound: nothing was sent anywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Busy;

/// Publishes from `from`: checks that every destination has room, builds the publication
/// (`build`, called once and only then), hands it to `deliver_local` when `from` is a
/// shard (its own subscribers) and pushes it to every other shard. `wake` is called for
/// each shard owed a wake-up ([`Mesh::push_deferred`]): a shard wakes it at once
/// ([`Mesh::wake`]), the REST thread once per batch of requests.
///
/// Allocations are per publication, never per subscriber: what `build` makes and the
/// `Arc` the shards share.
pub fn publish(
    mesh: &Mesh,
    from: Source,
    build: impl FnOnce() -> Publication,
    deliver_local: impl FnOnce(&Arc<Publication>),
    mut wake: impl FnMut(ShardId),
) -> Result<Arc<Publication>, Busy> {
    let local = match from {
        Source::Shard(s) => Some(s),
        Source::External => None,
    };
    if !mesh.all_have_room(local) {
        return Err(Busy);
    }
    let p = Arc::new(build());
    if local.is_some() {
        deliver_local(&p);
    }
    for s in (0..mesh.shards() as u16).map(ShardId) {
        if Some(s) != local && mesh.push_deferred(from, s, ShardMsg::Publish(p.clone())) {
            wake(s);
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AppId;

    fn publication() -> Publication {
        Publication::new(AppId(0), "room", "alice", b"1", None, None)
    }

    #[test]
    fn a_shard_delivers_locally_and_queues_for_the_others() {
        let mesh = Mesh::new(3, 0).unwrap();
        let mut local = 0;
        let mut woken = Vec::new();
        let r = publish(
            &mesh,
            Source::Shard(ShardId(1)),
            publication,
            |_| local += 1,
            |s| woken.push(s),
        );
        assert!(r.is_ok());
        assert_eq!(local, 1);
        assert_eq!(woken, [ShardId(0), ShardId(2)]);
        assert_eq!(mesh.depth(ShardId(1)), 0, "nothing queued for itself");
        assert_eq!(mesh.depth(ShardId(0)), 1);
    }

    #[test]
    fn rest_queues_for_every_shard() {
        let mesh = Mesh::new(2, 0).unwrap();
        let mut woken = Vec::new();
        let r = publish(
            &mesh,
            Source::External,
            publication,
            |_| unreachable!("no local delivery"),
            |s| woken.push(s),
        );
        assert!(r.is_ok());
        assert_eq!(woken, [ShardId(0), ShardId(1)]);
    }

    #[test]
    fn a_full_destination_refuses_before_anything_is_built() {
        let mesh = Mesh::new(2, 1).unwrap();
        publish(&mesh, Source::External, publication, |_| {}, |_| {}).unwrap();
        let r = publish(
            &mesh,
            Source::Shard(ShardId(0)),
            || unreachable!("not built when busy"),
            |_| unreachable!(),
            |_| unreachable!(),
        );
        assert_eq!(r.err(), Some(Busy));
    }
}
