//! [ext] The owner's half of history channels (protocol §8.1): sequencing publications,
//! answering subscribes (ack, replay) and `history` queries, and the once-a-second sweep.
//! The store itself is `crate::history`; this file connects it to the mesh.
//!
//! Ordering: the owner fans a sequenced publication out to every other shard through the
//! mesh and to itself through its local queue, or on the spot when that queue is empty
//! (which is the same order: nothing is ahead of it). So everything the owner says about a
//! channel (publications, subscribe answers, presence) reaches every shard, the owner
//! included, in the owner's order, which is what the `awaiting` gate of a resuming
//! subscription relies on.

use std::{sync::atomic::Ordering, sync::Arc, time::Instant};

use bytes::Bytes;

use super::{cmd::refused_frame, Shard, State};
use crate::{
    auth::{keys::HistoryRule, AppId},
    history::Histories,
    protocol::encode::history as enc,
    router::{
        fanout, mesh::Source, ConnRef, HistoryAnswer, HistoryJoin, HistoryPublish, HistoryQuery,
        Publication, PublishAnswer, QueryAnswer, ShardMsg,
    },
};

impl Shard {
    /// Answers a subscribe to a history channel this shard owns: the ack (if it had a
    /// requestId) and, with `since`, the replay. Called while handling the subscribe's
    /// presence notice, so the answer leaves in the channel's order.
    pub(crate) fn history_answer(
        &self,
        st: &mut State,
        app: AppId,
        channel: &Arc<str>,
        join: &HistoryJoin,
    ) -> Box<HistoryAnswer> {
        let r = st.histories.resume(
            app,
            channel,
            join.rule,
            join.since.as_ref(),
            join.include_meta,
            Instant::now(),
        );
        self.history_gauges(&st.histories);
        Box::new(HistoryAnswer {
            ack: join
                .request_id
                .as_deref()
                .map(|rid| enc::subscribe_ack(rid, &r.epoch, r.last, r.recovered)),
            replay: r.frames,
        })
    }

    /// Sequences one publication on a history channel this shard owns: gives it the next
    /// offset, retains it, and fans it out (all or nothing, like any publication).
    pub(crate) fn sequence(&self, m: HistoryPublish) {
        self.sequence_parts(
            m.app,
            &m.channel,
            m.rule,
            &m.from,
            &m.data,
            m.metadata.as_ref(),
            m.origin,
            m.answer,
        );
    }

    /// [`Shard::sequence`] for a publication given by parts: also called straight from the
    /// publish command when the publisher's shard owns the channel and has nothing queued
    /// for itself (no copy of `data`, no trip through the local queue).
    #[allow(clippy::too_many_arguments)] // the fields of `HistoryPublish`, borrowed
    pub(crate) fn sequence_parts(
        &self,
        app: AppId,
        channel: &Arc<str>,
        rule: HistoryRule,
        from: &str,
        data: &[u8],
        metadata: Option<&Bytes>,
        origin: Option<ConnRef>,
        answer: PublishAnswer,
    ) {
        let mesh = &self.broker.mesh;
        let mut offset = 0;
        let published = fanout::publish(
            mesh,
            Source::Shard(self.id),
            || {
                let mut st = self.state.borrow_mut();
                let p = st.histories.append(
                    app,
                    channel,
                    rule,
                    from,
                    metadata.map(|m| m.len()),
                    Instant::now(),
                    |o| {
                        offset = o;
                        Publication::sequenced(
                            app,
                            channel,
                            from,
                            o,
                            data,
                            metadata.map(|m| &m[..]),
                            origin,
                        )
                    },
                    |p| p.frame_with_meta.as_ref().unwrap_or(&p.frame),
                );
                self.history_gauges(&st.histories);
                p
            },
            // In order with whatever this shard already queued for itself about the channel
            // (module docs): on the spot when nothing is queued, else behind it.
            |p| {
                if self.local_is_empty() {
                    self.deliver_publication(p);
                } else {
                    self.route(self.id, ShardMsg::Publish(p.clone()));
                }
            },
            |s| mesh.wake(s),
        );
        match (answer, published) {
            (PublishAnswer::Rest(reply), r) => {
                let _ = reply.send(r.map(|_| offset)); // the REST request may have timed out
            }
            (PublishAnswer::Conn { request_id }, r) => {
                let Some(o) = origin else { return };
                let frame = match r {
                    Ok(_) => match request_id {
                        Some(rid) => enc::publish_ack(&rid, offset),
                        None => return,
                    },
                    Err(fanout::Busy) => {
                        crate::metrics::ShardCounters::add(
                            &self.counters().cross_shard_refusals,
                            1,
                        );
                        refused_frame(request_id.as_deref())
                    }
                };
                if o.shard == self.id {
                    if let Some(e) = self.state.borrow().conns.get(&o.conn) {
                        e.handle.send(&frame);
                    }
                    return;
                }
                self.route(
                    o.shard,
                    ShardMsg::ConnFrame {
                        conn: o.conn,
                        frame,
                        large: false,
                    },
                );
            }
        }
    }

    /// Answers a `history` query about a channel this shard owns.
    pub(crate) fn answer_query(&self, q: HistoryQuery) {
        let HistoryQuery {
            app,
            channel,
            rule,
            since_offset,
            limit,
            answer,
        } = q;
        let mut st = self.state.borrow_mut();
        let now = Instant::now();
        let limit = usize::from(limit);
        match answer {
            QueryAnswer::Conn { conn, request_id } => {
                let frame = st.histories.query(
                    app,
                    &channel,
                    rule,
                    since_offset,
                    limit,
                    now,
                    |epoch, last, items| enc::history_ack(&request_id, epoch, last, items),
                );
                self.history_gauges(&st.histories);
                drop(st);
                self.route(
                    conn.shard,
                    ShardMsg::ConnFrame {
                        conn: conn.conn,
                        frame,
                        large: true,
                    },
                );
            }
            QueryAnswer::Rest(reply) => {
                let body = st.histories.query(
                    app,
                    &channel,
                    rule,
                    since_offset,
                    limit,
                    now,
                    |epoch, last, items| enc::history_body(&channel, epoch, last, items),
                );
                self.history_gauges(&st.histories);
                let _ = reply.send(body); // the REST request may have timed out
            }
        }
    }

    /// Drops expired history entries and the records of channels with neither entries
    /// nor subscribers. Called by the housekeeping tick.
    pub(crate) fn sweep_histories(&self) {
        let mut st = self.state.borrow_mut();
        let State {
            histories, rosters, ..
        } = &mut *st;
        if histories.channels() == 0 {
            return;
        }
        histories.sweep(Instant::now(), |app, ch| rosters.contains(app, ch));
        self.history_gauges(histories);
    }

    /// Publishes the store's gauges and eviction counts to `/metrics`.
    pub(crate) fn history_gauges(&self, h: &Histories) {
        let c = self.counters();
        c.history_messages
            .store(h.messages() as u64, Ordering::Relaxed);
        c.history_bytes.store(h.bytes() as u64, Ordering::Relaxed);
        for (slot, n) in c.history_evictions.iter().zip(h.evictions) {
            slot.store(n, Ordering::Relaxed);
        }
    }
}
