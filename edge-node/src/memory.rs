//! Byte budgets for request and response payloads held in memory.
//!
//! A board has a memory budget; the payloads the node holds across all
//! connections at once are what grows with load, so they are counted here.
//! Produce payloads draw on `queued-max-request-bytes` (Kafka's
//! `queued.max.request.bytes`) while they are read, appended and answered;
//! fetch responses draw on `fetch-response-bytes-max` while they are read from
//! the log and written. A request that finds its budget used up waits (its
//! stream is not read, so QUIC flow control holds the client back) and is
//! refused with a typed, retriable error if the budget stays full for
//! [`BUDGET_WAIT_MS_MAX`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use event_listener::Event;
use futures_lite::FutureExt as _;

/// Longest a request waits for budget before it is refused.
pub const BUDGET_WAIT_MS_MAX: u64 = 5_000;

/// A budget of bytes shared by concurrent requests.
#[derive(Debug)]
pub struct ByteBudget {
    /// Bytes that may be reserved at once.
    capacity_bytes: u64,
    /// Bytes reserved now.
    used_bytes: Mutex<u64>,
    /// Notified whenever bytes are given back.
    freed: Event,
}

/// The budget stayed too full for the whole wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the node's {name} budget ({capacity_bytes} bytes) stayed full for {waited_ms} ms \
     ({wanted_bytes} more bytes wanted): retry later, send smaller requests, or raise {name}"
)]
pub struct BudgetExhausted {
    /// The config key that sets the budget.
    pub name: &'static str,
    /// The budget.
    pub capacity_bytes: u64,
    /// Bytes the request still needed.
    pub wanted_bytes: u64,
    /// How long it waited.
    pub waited_ms: u64,
}

impl ByteBudget {
    /// A budget of `capacity_bytes`, named by its config key for errors.
    pub fn new(capacity_bytes: u64) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            capacity_bytes,
            used_bytes: Mutex::new(0),
            freed: Event::new(),
        })
    }

    /// Bytes that may be reserved at once.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// Bytes reserved now.
    pub fn used_bytes(&self) -> u64 {
        *self
            .used_bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes up to `want` bytes but at least `floor` (both capped at the
    /// capacity): whatever is free now if that is at least `floor`, else it
    /// waits for `floor` to be free. Returns the bytes taken.
    fn take(&self, want: u64, floor: u64) -> Option<u64> {
        let floor = floor.min(want).min(self.capacity_bytes);
        let want = want.min(self.capacity_bytes);
        let mut used = self
            .used_bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let free = self.capacity_bytes - *used;
        if free < floor {
            return None;
        }
        let granted = want.min(free);
        *used += granted;
        Some(granted)
    }

    fn give_back(&self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        let mut used = self
            .used_bytes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        assert!(*used >= bytes, "budget gives back more than was taken");
        *used -= bytes;
        drop(used);
        self.freed.notify(usize::MAX);
    }

    /// Waits (at most `wait`) until `take(want, floor)` succeeds.
    async fn take_waiting(
        &self,
        name: &'static str,
        want: u64,
        floor: u64,
        wait: Duration,
    ) -> Result<u64, BudgetExhausted> {
        let started = Instant::now();
        let deadline = started + wait;
        loop {
            if let Some(granted) = self.take(want, floor) {
                return Ok(granted);
            }
            let listener = self.freed.listen();
            // Bytes may have come back between the check and the listen.
            if let Some(granted) = self.take(want, floor) {
                return Ok(granted);
            }
            let timed_out = async {
                listener.await;
                false
            }
            .or(async {
                smol::Timer::at(deadline).await;
                true
            })
            .await;
            if timed_out {
                return Err(BudgetExhausted {
                    name,
                    capacity_bytes: self.capacity_bytes,
                    wanted_bytes: floor.min(want),
                    waited_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                });
            }
        }
    }

    /// An empty reservation on this budget, to [`Reservation::grow_to`] later.
    pub fn reservation(self: &Arc<Self>, name: &'static str) -> Reservation {
        Reservation {
            budget: self.clone(),
            name,
            bytes: 0,
        }
    }

    /// Reserves between `floor` and `want` bytes: as much of `want` as is free,
    /// waiting (at most `wait`) only while less than `floor` is free.
    pub async fn reserve_up_to(
        self: &Arc<Self>,
        name: &'static str,
        want: u64,
        floor: u64,
        wait: Duration,
    ) -> Result<Reservation, BudgetExhausted> {
        let bytes = self.take_waiting(name, want, floor, wait).await?;
        Ok(Reservation {
            budget: self.clone(),
            name,
            bytes,
        })
    }
}

/// Bytes taken from a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    name: &'static str,
    bytes: u64,
}

impl Reservation {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Grows the reservation to `total` bytes, waiting (at most `wait`) for
    /// the difference. A `total` over the budget's capacity can never be
    /// granted and fails at once.
    pub async fn grow_to(&mut self, total: u64, wait: Duration) -> Result<(), BudgetExhausted> {
        if total <= self.bytes {
            return Ok(());
        }
        let extra = total - self.bytes;
        if total > self.budget.capacity_bytes {
            return Err(BudgetExhausted {
                name: self.name,
                capacity_bytes: self.budget.capacity_bytes,
                wanted_bytes: extra,
                waited_ms: 0,
            });
        }
        let granted = self
            .budget
            .take_waiting(self.name, extra, extra, wait)
            .await?;
        self.bytes += granted;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAME: &str = "queued-max-request-bytes";

    #[test]
    fn reservations_are_bounded_and_given_back() {
        smol::block_on(async {
            let budget = ByteBudget::new(100);
            let wait = Duration::from_millis(50);
            let a = budget
                .reserve_up_to(NAME, 60, 60, wait)
                .await
                .expect("fits");
            assert_eq!(a.bytes(), 60);
            // Only 40 free: granted 40 of the 60 wanted, as the floor is 10.
            let b = budget
                .reserve_up_to(NAME, 60, 10, wait)
                .await
                .expect("fits");
            assert_eq!(b.bytes(), 40);
            assert_eq!(budget.used_bytes(), 100);
            let error = budget
                .reserve_up_to(NAME, 10, 10, wait)
                .await
                .expect_err("budget is full");
            assert_eq!(error.name, NAME);
            assert!(error.to_string().contains(NAME), "{error}");
            drop(a);
            assert_eq!(budget.used_bytes(), 40);
            drop(b);
            assert_eq!(budget.used_bytes(), 0);
        });
    }

    #[test]
    fn a_waiting_request_proceeds_when_bytes_come_back() {
        smol::block_on(async {
            let budget = ByteBudget::new(100);
            let mut held = budget.reservation(NAME);
            held.grow_to(90, Duration::from_millis(10))
                .await
                .expect("fits");
            let releaser = smol::spawn(async move {
                smol::Timer::after(Duration::from_millis(50)).await;
                drop(held);
            });
            let mut waiting = budget.reservation(NAME);
            waiting
                .grow_to(50, Duration::from_secs(30))
                .await
                .expect("granted after the release");
            assert_eq!(waiting.bytes(), 50);
            releaser.await;
            assert_eq!(budget.used_bytes(), 50);
        });
    }

    #[test]
    fn more_than_the_capacity_fails_at_once() {
        smol::block_on(async {
            let budget = ByteBudget::new(100);
            let mut r = budget.reservation(NAME);
            let error = r
                .grow_to(101, Duration::from_secs(30))
                .await
                .expect_err("never fits");
            assert_eq!(error.waited_ms, 0);
            assert_eq!(budget.used_bytes(), 0);
        });
    }
}
