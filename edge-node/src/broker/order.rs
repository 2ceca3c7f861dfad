//! The order of one connection's produce requests.
//!
//! Kafka appends the requests of one connection in the order they were sent:
//! TCP delivers them in order and the broker reads them one by one. Over QUIC
//! every request has its own stream, and the node reads and checks streams
//! concurrently, so without a rule a small batch could overtake a larger one
//! sent before it to the same partition. A [`Sequencer`] restores Kafka's
//! order: every stream of a connection takes a [`Turn`] when it is accepted
//! (the order in which the client opened them), and a produce request queues
//! its batches for the partition writer only once every earlier stream of the
//! connection has queued its own or finished. Everything before that point
//! (reading the payload, CRC checks, interceptors) still runs concurrently.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use event_listener::Event;

/// Hands out turns in the order streams are accepted and lets each wait for
/// the ones before it.
#[derive(Debug, Default)]
pub struct Sequencer {
    state: Mutex<State>,
    moved: Event,
}

#[derive(Debug, Default)]
struct State {
    /// The next ticket handed out.
    issued: u64,
    /// Every ticket below this one is done.
    done_below: u64,
    /// Done tickets above `done_below` (finished out of order).
    done_early: BTreeSet<u64>,
}

impl Sequencer {
    /// A sequencer for one connection.
    pub fn new() -> Arc<Sequencer> {
        Arc::new(Sequencer::default())
    }

    /// The next turn, in the order of the calls.
    pub fn turn(self: &Arc<Self>) -> Turn {
        let mut state = lock(&self.state);
        let ticket = state.issued;
        state.issued += 1;
        Turn {
            sequencer: self.clone(),
            ticket,
        }
    }

    fn done(&self, ticket: u64) {
        let mut state = lock(&self.state);
        if ticket == state.done_below {
            state.done_below += 1;
            loop {
                let next = state.done_below;
                if !state.done_early.remove(&next) {
                    break;
                }
                state.done_below += 1;
            }
            drop(state);
            self.moved.notify(usize::MAX);
        } else {
            state.done_early.insert(ticket);
        }
    }

    fn all_done_below(&self, ticket: u64) -> bool {
        lock(&self.state).done_below >= ticket
    }
}

/// One stream's place in its connection's order. Dropping it (done or
/// failed) lets the later ones go on.
#[derive(Debug)]
pub struct Turn {
    sequencer: Arc<Sequencer>,
    ticket: u64,
}

impl Turn {
    /// Waits until every earlier turn of the connection is done.
    pub async fn wait(&self) {
        loop {
            if self.sequencer.all_done_below(self.ticket) {
                return;
            }
            // Listen first, then look again, so a notify in between is not lost.
            let listener = self.sequencer.moved.listen();
            if self.sequencer.all_done_below(self.ticket) {
                return;
            }
            listener.await;
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.sequencer.done(self.ticket);
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future;

    #[test]
    fn a_turn_goes_once_every_earlier_one_is_done() {
        let seq = Sequencer::new();
        let (a, b, c) = (seq.turn(), seq.turn(), seq.turn());
        // The first never waits.
        future::block_on(a.wait());
        assert!(future::block_on(future::poll_once(c.wait())).is_none());
        // Done out of order: b first, then a; c goes only after both.
        drop(b);
        assert!(future::block_on(future::poll_once(c.wait())).is_none());
        drop(a);
        assert!(future::block_on(future::poll_once(c.wait())).is_some());
        drop(c);
        let d = seq.turn();
        assert!(future::block_on(future::poll_once(d.wait())).is_some());
    }

    #[test]
    fn a_waiting_turn_wakes_when_the_earlier_one_drops() {
        let seq = Sequencer::new();
        let first = seq.turn();
        let second = seq.turn();
        let waiter = std::thread::spawn(move || {
            future::block_on(second.wait());
            second.ticket
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        drop(first);
        assert_eq!(waiter.join().expect("waiter"), 1);
    }
}
