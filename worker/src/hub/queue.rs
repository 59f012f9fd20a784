//! The frame queue between a source and one subscriber: one producer, one consumer,
//! unbounded here (the subscriber's [`QueueLimits`](super::QueueLimits) bound it from the
//! outside), closed from either end.
//!
//! Why not `tokio::sync::mpsc`: its unbounded channel allocates in blocks of 32 slots and
//! keeps a few of them per channel. With one channel per push destination that was about
//! 4 KiB per destination (heaptrack, 200 destinations) — a fifth of what a destination
//! cost in all, while a destination only ever has ~10 frames queued between two writes.
//! This queue is a `VecDeque` behind a mutex that gives back what a burst (the cached GOP
//! a new subscriber starts with) made it grow once it is drained: a few hundred bytes per
//! destination. One producer and one consumer, each holding the lock for a push or a pop,
//! never wait on each other for long.
//!
//! The consumer's waker is dropped as soon as a frame is taken, so a session that is not
//! waiting on the queue (it sleeps out its write window instead) is not woken by every
//! frame the source queues.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Capacity kept once the queue is drained.
const KEEP: usize = 16;

/// A queue and its two ends.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Mutex::new(State {
        items: VecDeque::new(),
        sender: true,
        receiver: true,
        waker: None,
    }));
    (
        Sender {
            shared: Arc::clone(&shared),
        },
        Receiver { shared },
    )
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// Whether the [`Sender`] still exists.
    sender: bool,
    /// Whether the [`Receiver`] still exists.
    receiver: bool,
    /// The consumer waiting for an item, if it is waiting.
    waker: Option<Waker>,
}

fn lock<T>(m: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Nothing panics while holding the lock; if it did, the queue is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The producing end. Dropping it ends the stream: the receiver gets what is queued,
/// then `None`.
#[derive(Debug)]
pub(crate) struct Sender<T> {
    shared: Arc<Mutex<State<T>>>,
}

impl<T> Sender<T> {
    /// Queues `item`; gives it back if the receiver is gone.
    pub fn send(&self, item: T) -> Result<(), T> {
        let waker = {
            let mut s = lock(&self.shared);
            if !s.receiver {
                return Err(item);
            }
            s.items.push_back(item);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !lock(&self.shared).receiver
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = lock(&self.shared);
            s.sender = false;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// Why [`Receiver::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TryRecv {
    Empty,
    Closed,
}

/// The consuming end. Dropping it closes the queue and frees what is queued.
#[derive(Debug)]
pub(crate) struct Receiver<T> {
    shared: Arc<Mutex<State<T>>>,
}

impl<T> Receiver<T> {
    /// The next item; `None` once the sender is gone and the queue drained. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Waits for at least one item, then moves up to `limit` into `buf`. Returns how many;
    /// 0 when the queue is closed and drained (or `limit` is 0). Cancel-safe.
    pub async fn recv_many(&mut self, buf: &mut Vec<T>, limit: usize) -> usize {
        if limit == 0 {
            return 0;
        }
        poll_fn(|cx| {
            let mut s = lock(&self.shared);
            if s.items.is_empty() {
                return s.wait(cx).map(|()| 0);
            }
            let n = limit.min(s.items.len());
            buf.extend(s.items.drain(..n));
            s.taken();
            Poll::Ready(n)
        })
        .await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = lock(&self.shared);
        match s.items.pop_front() {
            Some(item) => {
                s.taken();
                Poll::Ready(Some(item))
            }
            None => s.wait(cx).map(|()| None),
        }
    }

    /// An item that is queued now, without waiting.
    pub fn try_recv(&mut self) -> Result<T, TryRecv> {
        let mut s = lock(&self.shared);
        match s.items.pop_front() {
            Some(item) => {
                s.taken();
                Ok(item)
            }
            None if s.sender => Err(TryRecv::Empty),
            None => Err(TryRecv::Closed),
        }
    }
}

impl<T> State<T> {
    /// The queue is empty: `Ready` if it will stay so (the sender is gone), else the
    /// waker is kept for the next `send`.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.sender {
            return Poll::Ready(());
        }
        match &mut self.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// After items were taken: the consumer is not waiting any more, and a drained queue
    /// gives back what a burst made it grow.
    fn taken(&mut self) {
        self.waker = None;
        if self.items.is_empty() && self.items.capacity() > KEEP {
            self.items.shrink_to(KEEP);
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut s = lock(&self.shared);
            s.receiver = false;
            s.waker = None;
            std::mem::take(&mut s.items)
        };
        // Dropped outside the lock.
        drop(items);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_then_none_after_the_sender_is_gone() {
        let (tx, mut rx) = channel();
        for i in 0..100 {
            tx.send(i).unwrap();
        }
        drop(tx);
        for i in 0..100 {
            assert_eq!(rx.recv().await, Some(i));
        }
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecv::Closed));
    }

    /// Until the receiver is parked on the queue (its waker registered).
    async fn waiting<T>(tx: &Sender<T>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while lock(&tx.shared).waker.is_none() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver never waited"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_send_and_by_close() {
        let (tx, mut rx) = channel::<u32>();
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            let second = rx.recv().await;
            (first, second)
        });
        waiting(&tx).await;
        tx.send(7).unwrap();
        waiting(&tx).await;
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the receiver woke up")
            .unwrap();
        assert_eq!(got, (Some(7), None));
    }

    #[test]
    fn send_fails_once_the_receiver_is_gone() {
        let (tx, rx) = channel();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(tx.send(1), Err(1));
    }

    #[test]
    fn try_recv_tells_empty_from_closed() {
        let (tx, mut rx) = channel();
        assert_eq!(rx.try_recv(), Err(TryRecv::Empty));
        tx.send(1).unwrap();
        assert_eq!(rx.try_recv(), Ok(1));
        drop(tx);
        assert_eq!(rx.try_recv(), Err(TryRecv::Closed));
    }

    #[tokio::test]
    async fn recv_many_takes_up_to_the_limit() {
        let (tx, mut rx) = channel();
        for i in 0..10 {
            tx.send(i).unwrap();
        }
        let mut buf = Vec::new();
        assert_eq!(rx.recv_many(&mut buf, 4).await, 4);
        assert_eq!(rx.recv_many(&mut buf, 100).await, 6);
        assert_eq!(buf, (0..10).collect::<Vec<_>>());
        assert_eq!(rx.recv_many(&mut buf, 0).await, 0);
        drop(tx);
        assert_eq!(rx.recv_many(&mut buf, 100).await, 0);
    }

    #[test]
    fn a_drained_burst_gives_its_memory_back() {
        let (tx, mut rx) = channel();
        for i in 0..1000 {
            tx.send(i).unwrap();
        }
        assert!(lock(&rx.shared).items.capacity() >= 1000);
        // Taking one item of many does not shrink: no reallocation per item taken.
        let before = lock(&rx.shared).items.capacity();
        assert!(rx.try_recv().is_ok());
        assert_eq!(lock(&rx.shared).items.capacity(), before);
        while rx.try_recv().is_ok() {}
        assert!(lock(&rx.shared).items.capacity() <= KEEP);
    }

    #[test]
    fn a_dropped_receiver_frees_what_was_queued() {
        let (tx, rx) = channel();
        let item = Arc::new(());
        tx.send(Arc::clone(&item)).unwrap();
        assert_eq!(Arc::strong_count(&item), 2);
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1);
    }

    /// A waker that counts its wake-ups.
    struct Counting(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn the_receiver_polled_last_is_the_one_woken() {
        let (tx, mut rx) = channel::<u8>();
        let (a, b) = (
            Arc::new(Counting(Default::default())),
            Arc::new(Counting(Default::default())),
        );
        let (wa, wb) = (
            std::task::Waker::from(a.clone()),
            std::task::Waker::from(b.clone()),
        );
        assert!(rx.poll_recv(&mut Context::from_waker(&wa)).is_pending());
        // The receiver moved to another task: that task must be woken, not the first.
        assert!(rx.poll_recv(&mut Context::from_waker(&wb)).is_pending());
        tx.send(1).unwrap();
        let woken = |c: &Counting| c.0.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!((woken(&a), woken(&b)), (0, 1));
    }
}
