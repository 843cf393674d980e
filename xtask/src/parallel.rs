//! Work spread over a few threads: each takes the next item until none is left, with a state
//! of its own (a buffer, a compressor) made once per thread.

use std::sync::atomic::{AtomicUsize, Ordering};

/// `work` on every item of `items`, on `threads` threads; the results in the items' order, or
/// the first error met.
pub fn map<T: Sync, S, R: Send, E: Send>(
    items: &[T],
    threads: usize,
    state: impl Fn() -> Result<S, E> + Sync,
    work: impl Fn(&mut S, &T) -> Result<R, E> + Sync,
) -> Result<Vec<R>, E> {
    let next = AtomicUsize::new(0);
    let done = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, items.len().max(1)))
            .map(|_| {
                s.spawn(|| -> Result<Vec<(usize, R)>, E> {
                    let mut own = state()?;
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else {
                            return Ok(out);
                        };
                        out.push((i, work(&mut own, item)?));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Result<Vec<_>, E>>()
    })?;
    let mut done: Vec<(usize, R)> = done.into_iter().flatten().collect();
    done.sort_by_key(|(i, _)| *i);
    Ok(done.into_iter().map(|(_, r)| r).collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn results_come_in_order_and_the_first_error_stops_the_work() {
        let items: Vec<u32> = (0..100).collect();
        let squares = super::map(&items, 3, || Ok::<_, String>(()), |_, x| Ok(x * x)).unwrap();
        assert_eq!(squares, items.iter().map(|x| x * x).collect::<Vec<_>>());
        let err = super::map(
            &items,
            2,
            || Ok(()),
            |_, &x| {
                if x == 42 {
                    Err(format!("item {x}"))
                } else {
                    Ok(x)
                }
            },
        );
        assert_eq!(err.unwrap_err(), "item 42");
        let none: Vec<u32> =
            super::map(&[], 2, || Ok::<_, String>(()), |_, x: &u32| Ok(*x)).unwrap();
        assert!(none.is_empty());
    }
}
