//! Fuzz target for `portcullis_core::sse::SseParser`: never panics, arbitrary chunking yields
//! the same events (or the same error) as one chunk, and every dispatched event survives
//! `write_event` → parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::sse::{SseError, SseEvent, SseParser, write_event};

fn whole(input: &[u8], max: usize) -> Result<Vec<SseEvent>, SseError> {
    let mut p = SseParser::new(max);
    let mut events = p.push(input)?;
    events.extend(p.finish()?);
    Ok(events)
}

fuzz_target!(|input: (u8, Vec<u16>, &[u8])| {
    let (size, cuts, stream) = input;
    let max = 8 + usize::from(size) * 4;
    let expected = whole(stream, max);

    let mut cuts: Vec<usize> = cuts
        .iter()
        .map(|c| usize::from(*c) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut p = SseParser::new(max);
    let mut events = Vec::new();
    let mut start = 0;
    let mut chunked = Ok(());
    for end in cuts.into_iter().chain([stream.len()]) {
        match p.push(&stream[start..end]) {
            Ok(e) => events.extend(e),
            Err(e) => {
                chunked = Err(e);
                break;
            }
        }
        start = end;
    }
    match (expected, chunked) {
        (Ok(all), Ok(())) => {
            assert_eq!(all, events);
            for event in &all {
                let wire = write_event(event);
                assert_eq!(
                    whole(wire.as_bytes(), usize::MAX),
                    Ok(vec![event.clone()]),
                    "{wire:?}"
                );
            }
        }
        (Err(a), Err(b)) => assert_eq!(a, b),
        (a, b) => panic!("one chunk gave {a:?}, chunked gave {b:?}"),
    }
});
