// Spoken replies: PCM chunks played back to back with the Web Audio API.
//
// Wire format (docs/protocol.md "Audio frames"): a JSON `audio` start event names the stream, its
// sample rate and channel count; binary frames carry bytes 0-3 the stream number and bytes
// 4-7 the chunk index (unsigned big-endian), then signed 16-bit little-endian PCM; an `end`
// event closes the stream and `cancel` drops whatever is still queued. Each chunk is
// scheduled to start exactly where the previous one ends, so playback has no gaps.
//
// Playback reports: while a stream plays, onPlayed(stream, ms) says how much of it this
// listener has heard, every REPORT_EVERY_MS, and once more when it stops (ended,
// cancelled, stopped here, or silenced because the listener started to talk). The page
// sends them as `played` frames, so the server knows where a reply was cut off for us.

// How far ahead of "now" the first chunk of a stream starts: enough for the audio thread to
// pick it up without a click, too little for anyone to notice.
const START_LEAD_S = 0.05;
// The protocol asks for a report at least every 250 ms while playing; 200 ms keeps that
// with the timer's own jitter.
const REPORT_EVERY_MS = 200;
// Streams stopped here (barge-in) whose chunks may still arrive: remembered so those are
// ignored quietly, forgotten at their end; at most this many (older ones are long over).
const MAX_SILENCED = 32;

export function parseAudioFrame(buffer) {
  const view = new DataView(buffer);
  return { stream: view.getUint32(0, false), index: view.getUint32(4, false), pcm: buffer.slice(8) };
}

export function base64ToArrayBuffer(data) {
  const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
  return bytes.buffer;
}

export class AudioPlayer {
  // onPlayed(stream, ms): a playback report (see above).
  constructor({ onPlayed = () => {} } = {}) {
    this.onPlayed = onPlayed;
    this.ctx = null;
    this.streams = new Map(); // stream number -> state
    this.silenced = new Set();
    this.reporter = null; // the report timer, running while anything plays
    this.reports = 0; // reports made, for tests
    this.heldFor = null; // the message whose pause suspended playback
    this.played = 0; // chunks scheduled, for tests and diagnostics
    this.dropped = 0; // chunks that arrived with no stream or no audio context
  }

  // Browsers only let audio start from a user gesture: call this from a click or key.
  unlock() {
    if (!this.ctx) {
      const Context = window.AudioContext || window.webkitAudioContext;
      if (!Context) return;
      this.ctx = new Context();
    }
    if (this.ctx.state === "suspended" && this.heldFor === null) this.ctx.resume();
  }

  onEvent(event) {
    if (event.state === "start") {
      this.streams.set(event.stream, {
        messageId: event.message_id,
        sampleRate: event.sample_rate,
        channels: event.channels || 1,
        nextIndex: 0,
        waiting: new Map(), // chunks that arrived ahead of their turn
        nextTime: 0,
        sources: new Map(), // source -> {at, duration} in context seconds
        heardS: 0, // seconds of the sources that have finished playing
        scheduled: false,
        reportedMs: -1,
        ended: false,
      });
    } else if (event.state === "end") {
      this.silenced.delete(event.stream);
      const stream = this.streams.get(event.stream);
      if (stream) {
        stream.ended = true;
        this.retireIfDone(event.stream, stream);
      }
    } else if (event.state === "cancel") {
      this.silenced.delete(event.stream);
      this.cancel(event.stream);
    } else if (typeof event.data === "string") {
      // SSE carries chunks as base64 in JSON events.
      this.chunk(event.stream, event.index ?? event.chunk ?? 0, base64ToArrayBuffer(event.data));
    }
  }

  onBinary(buffer) {
    if (buffer.byteLength < 8) return;
    const frame = parseAudioFrame(buffer);
    this.chunk(frame.stream, frame.index, frame.pcm);
  }

  chunk(streamId, index, pcm) {
    const stream = this.streams.get(streamId);
    if (!stream && this.silenced.has(streamId)) return;
    if (!stream || !this.ctx) {
      this.dropped += 1;
      return;
    }
    stream.waiting.set(index, pcm);
    while (stream.waiting.has(stream.nextIndex)) {
      const next = stream.waiting.get(stream.nextIndex);
      stream.waiting.delete(stream.nextIndex);
      stream.nextIndex += 1;
      this.schedule(streamId, stream, next);
    }
  }

  schedule(streamId, stream, pcm) {
    const { ctx } = this;
    const view = new DataView(pcm);
    const frames = Math.floor(pcm.byteLength / 2 / stream.channels);
    if (!frames) return;
    const buffer = ctx.createBuffer(stream.channels, frames, stream.sampleRate);
    for (let c = 0; c < stream.channels; c += 1) {
      const samples = new Float32Array(frames);
      for (let i = 0; i < frames; i += 1) {
        samples[i] = view.getInt16((i * stream.channels + c) * 2, true) / 32768;
      }
      buffer.copyToChannel(samples, c);
    }
    const source = ctx.createBufferSource();
    source.buffer = buffer;
    source.connect(ctx.destination);
    const at = Math.max(stream.nextTime, ctx.currentTime + START_LEAD_S);
    source.start(at);
    stream.nextTime = at + buffer.duration;
    stream.sources.set(source, { at, duration: buffer.duration });
    stream.scheduled = true;
    this.played += 1;
    this.startReporting();
    source.onended = () => {
      const span = stream.sources.get(source);
      if (span) stream.heardS += span.duration;
      stream.sources.delete(source);
      this.retireIfDone(streamId, stream);
    };
  }

  retireIfDone(streamId, stream) {
    if (stream.ended && stream.sources.size === 0 && this.streams.get(streamId) === stream) {
      this.streams.delete(streamId);
      this.report(streamId, stream, { final: true });
    }
  }

  // Milliseconds of the stream this listener has heard: what finished playing, and of what
  // is playing, the part the context's clock (less the output's latency) has passed.
  heardMs(stream) {
    let seconds = stream.heardS;
    if (this.ctx && stream.sources.size) {
      const now = this.ctx.currentTime - (this.ctx.outputLatency || 0);
      for (const { at, duration } of stream.sources.values()) {
        seconds += Math.min(Math.max(now - at, 0), duration);
      }
    }
    return Math.round(seconds * 1000);
  }

  report(streamId, stream, { final = false } = {}) {
    if (!stream.scheduled) return; // nothing of it played
    const ms = this.heardMs(stream);
    if (!final && ms === stream.reportedMs) return; // paused or waiting for audio
    stream.reportedMs = ms;
    this.reports += 1;
    this.onPlayed(streamId, ms);
  }

  startReporting() {
    if (this.reporter) return;
    this.reporter = setInterval(() => {
      let playing = false;
      for (const [id, stream] of this.streams) {
        if (!stream.sources.size) continue;
        playing = true;
        if (this.ctx && this.ctx.state === "running") this.report(id, stream);
      }
      if (!playing) this.stopReporting();
    }, REPORT_EVERY_MS);
  }

  stopReporting() {
    clearInterval(this.reporter);
    this.reporter = null;
  }

  // A fresh report for every stream under way (before a `stop` or `speech start`).
  reportNow() {
    for (const [id, stream] of this.streams) this.report(id, stream);
  }

  // The stream of a message, if it is being played here.
  streamOf(messageId) {
    for (const [id, s] of this.streams) if (s.messageId === messageId) return id;
    return null;
  }

  // The listener stopped a reply: report what they heard, and stop its audio here at once
  // rather than when the server's `cancel` arrives.
  stopMessage(messageId) {
    for (const [id, s] of [...this.streams]) {
      if (s.messageId === messageId) this.silence(id);
    }
  }

  // The listener started to talk: whatever plays stops now (barge-in).
  bargeIn() {
    for (const id of [...this.streams.keys()]) this.silence(id);
  }

  silence(streamId) {
    this.silenced.add(streamId);
    while (this.silenced.size > MAX_SILENCED) this.silenced.delete(this.silenced.values().next().value);
    this.cancel(streamId);
  }

  cancel(streamId) {
    const stream = this.streams.get(streamId);
    if (!stream) return;
    this.report(streamId, stream, { final: true });
    this.streams.delete(streamId);
    for (const source of stream.sources.keys()) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // never started: nothing to stop
      }
      source.disconnect();
    }
    stream.sources.clear();
    if (this.heldFor === stream.messageId) this.release();
  }

  cancelAll() {
    for (const id of [...this.streams.keys()]) this.cancel(id);
    this.release();
  }

  // A reply's generation changed state: its audio follows (pause holds, stop flushes).
  onGeneration(messageId, state) {
    const speaking = [...this.streams.values()].some((s) => s.messageId === messageId);
    if (state === "paused" && speaking && this.ctx) {
      this.heldFor = messageId;
      this.ctx.suspend();
    } else if (state === "streaming" && this.heldFor === messageId) {
      this.release();
    } else if (state === "stopped" || state === "failed" || state === "interrupted") {
      for (const [id, s] of [...this.streams]) if (s.messageId === messageId) this.cancel(id);
    }
  }

  release() {
    this.heldFor = null;
    if (this.ctx && this.ctx.state === "suspended") this.ctx.resume();
  }

  debugState() {
    let queued = 0;
    for (const s of this.streams.values()) queued += s.sources.size;
    return {
      context: this.ctx ? this.ctx.state : "none",
      streams: this.streams.size,
      queued,
      played: this.played,
      dropped: this.dropped,
      heldFor: this.heldFor,
      reports: this.reports,
    };
  }
}
