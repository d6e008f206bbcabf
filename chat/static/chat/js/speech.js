// Push to talk: speak a message to the room (docs/protocol.md "Speaking to a room").
//
// Over the room's WebSocket: {"action":"speech","state":"start",...} with a request id,
// binary frames of s16le PCM while the member talks (mic.js), then "end" (the server
// transcribes and posts the text as a message) or "cancel" (nothing is posted). The
// server answers `listening`, then `transcribed` or an error, each with the request id.
// Frames captured before `listening` wait here, so the first word is not lost while the
// server gets ready; nothing is sent if the start was refused.
//
// The button works two ways: held (mouse, touch or Space) it records until released; a
// short press instead toggles, recording until the next press. Escape cancels.

import { Microphone, SPEECH_RATE } from "./mic.js";

// A press shorter than this is a click: the button then toggles instead of holding.
const TAP_MS = 300;
// Frames kept while waiting for `listening`: 3 s of speech. A server that has not answered
// by then is not coming; the oldest frames give way rather than the buffer grow.
const MAX_QUEUED_FRAMES = 30;
// How long "Transcribing..." may last before the page gives up on an answer: recognition
// of a long utterance on a small server takes seconds, a minute means it was lost.
const TRANSCRIBE_TIMEOUT_MS = 60000;
// Errors stay on the status line this long (as the page's other errors do).
const ERROR_SHOWN_MS = 8000;
// A frame louder than this (RMS, 0..1; about -40 dBFS) counts as voice for the meter's
// "heard you" state and for tests; room noise and digital silence stay below it.
const VOICE_RMS = 0.01;

const CAPTURING = new Set(["opening", "listening", "ending"]);

export class PushToTalk {
  // io: send(frame) -> bool, sendBinary(buffer) -> bool, ready() -> bool,
  // beforeStart() (barge-in: stop local playback, report it), fields() -> {ask_ai, voice},
  // announce(text).
  constructor({ button, status, text, level, workletUrl, io }) {
    this.button = button;
    this.label = button.querySelector(".talk__label");
    this.status = status;
    this.text = text;
    this.level = level;
    this.workletUrl = workletUrl;
    this.io = io;
    this.state = "idle"; // idle | opening | listening | ending | transcribing | error
    this.mode = "hold"; // hold | toggle
    this.attempt = 0;
    this.id = null; // the current request id
    this.mic = null;
    this.micOpen = false;
    this.acked = false; // `listening` received for this.id
    this.flushed = false; // the microphone's last frame is out (after release)
    this.queue = [];
    this.pressAt = 0;
    this.ignoreUp = false;
    this.suppressClick = false;
    this.timer = null;
    this.errorText = "";
    this.stats = { framesSent: 0, bytesSent: 0, frames: 0, voicedFrames: 0, quietRun: 0, maxRms: 0, queuedDropped: 0 };
  }

  wire() {
    const b = this.button;
    b.addEventListener("pointerdown", (e) => {
      if (e.pointerType === "mouse" && e.button !== 0) return;
      e.preventDefault();
      try {
        b.setPointerCapture(e.pointerId);
      } catch {
        // a synthetic pointer: capture is a nicety
      }
      this.down();
    });
    const up = () => this.up();
    b.addEventListener("pointerup", up);
    b.addEventListener("pointercancel", up);
    b.addEventListener("contextmenu", (e) => e.preventDefault()); // a long touch is a hold
    b.addEventListener("keydown", (e) => {
      if (e.key !== " ") return;
      e.preventDefault();
      e.stopPropagation();
      if (!e.repeat) this.down();
    });
    b.addEventListener("keyup", (e) => {
      if (e.key !== " ") return;
      e.preventDefault();
      e.stopPropagation();
      this.suppressClick = true;
      setTimeout(() => {
        this.suppressClick = false;
      }, 0);
      this.up();
    });
    // Enter (or a screen reader's activation) is a click with no pointer: it toggles.
    b.addEventListener("click", (e) => {
      if (e.detail !== 0 || this.suppressClick) return;
      if (CAPTURING.has(this.state)) {
        this.end();
      } else {
        this.press("toggle");
      }
    });
    // Space held anywhere outside a field talks too; Escape cancels from anywhere.
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && CAPTURING.has(this.state) && this.state !== "ending") {
        e.preventDefault();
        this.cancel();
      } else if (e.key === " " && e.target === document.body && !e.repeat) {
        e.preventDefault();
        this.down();
      }
    });
    document.addEventListener("keyup", (e) => {
      if (e.key === " " && e.target === document.body) {
        e.preventDefault();
        this.up();
      }
    });
    this.render();
  }

  // --- the button ---

  down() {
    if (CAPTURING.has(this.state)) {
      // A press while toggled on sends; its release is part of the same gesture.
      if (this.mode === "toggle") {
        this.ignoreUp = true;
        this.end();
      }
      return;
    }
    this.ignoreUp = false;
    this.press("hold");
  }

  up() {
    if (this.ignoreUp) {
      this.ignoreUp = false;
      return;
    }
    if (!CAPTURING.has(this.state) || this.mode !== "hold") return;
    if (Date.now() - this.pressAt < TAP_MS || !this.micOpen) {
      // A click (or a release while the browser still asks for the microphone): keep
      // listening until the next press.
      this.mode = "toggle";
      this.render();
      return;
    }
    this.end();
  }

  // --- one utterance ---

  press(mode) {
    if (this.state === "transcribing") return;
    if (!this.io.ready()) {
      this.fail("Voice input needs the live connection (WebSocket).");
      return;
    }
    clearTimeout(this.timer);
    this.io.beforeStart();
    this.attempt += 1;
    this.id = `speech-${this.attempt}`;
    this.mode = mode;
    this.pressAt = Date.now();
    this.micOpen = false;
    this.acked = false;
    this.flushed = false;
    this.queue = [];
    this.stats.quietRun = 0;
    this.errorText = "";
    const sent = this.io.send({ action: "speech", state: "start", format: "pcm_s16le", sample_rate: SPEECH_RATE, id: this.id });
    if (!sent) {
      this.fail("Voice input needs the live connection (WebSocket).");
      return;
    }
    this.state = "opening";
    const id = this.id;
    const mic = new Microphone({ workletUrl: this.workletUrl, onFrame: (pcm, level) => this.onFrame(id, pcm, level) });
    this.mic = mic;
    this.render();
    mic.open().then(
      (ok) => {
        if (!ok || this.id !== id || !CAPTURING.has(this.state)) return;
        this.micOpen = true;
        this.advance();
      },
      (err) => {
        if (this.id !== id || !CAPTURING.has(this.state)) return;
        this.io.send({ action: "speech", state: "cancel" }); // the server is listening
        this.fail(err.message);
      },
    );
  }

  onFrame(id, pcm, { rms }) {
    if (id !== this.id || !CAPTURING.has(this.state)) return;
    const s = this.stats;
    s.frames += 1;
    s.maxRms = Math.max(s.maxRms, rms);
    if (rms >= VOICE_RMS) {
      s.voicedFrames += 1;
      s.quietRun = 0;
    } else {
      s.quietRun += 1;
    }
    this.showLevel(rms);
    if (this.acked) {
      this.sendFrame(pcm);
    } else {
      this.queue.push(pcm);
      if (this.queue.length > MAX_QUEUED_FRAMES) {
        this.queue.shift();
        s.queuedDropped += 1;
      }
    }
  }

  sendFrame(pcm) {
    if (this.io.sendBinary(pcm)) {
      this.stats.framesSent += 1;
      this.stats.bytesSent += pcm.byteLength;
    }
  }

  end() {
    if (this.state !== "opening" && this.state !== "listening") return;
    if (!this.micOpen) {
      // Nothing recorded yet: stay on until the microphone is there.
      this.mode = "toggle";
      this.render();
      return;
    }
    this.state = "ending";
    this.render();
    const { id, mic } = this;
    mic.flush().then(() => {
      if (this.id !== id || this.state !== "ending") return;
      mic.close();
      this.flushed = true;
      this.maybeSendEnd();
    });
  }

  // `end` goes out once the last frame has, and only after the server is listening.
  maybeSendEnd() {
    if (this.state !== "ending" || !this.flushed || !this.acked) return;
    const frame = { action: "speech", state: "end", id: this.id, ...this.io.fields() };
    if (!this.io.send(frame)) {
      this.fail("The connection dropped; nothing was sent.");
      return;
    }
    this.state = "transcribing";
    this.render();
    const id = this.id;
    this.timer = setTimeout(() => {
      if (this.id === id && this.state === "transcribing") this.fail("No transcript came back. Try again.");
    }, TRANSCRIBE_TIMEOUT_MS);
  }

  cancel() {
    if (!CAPTURING.has(this.state)) return;
    this.io.send({ action: "speech", state: "cancel" });
    this.abandon();
    this.state = "idle";
    this.io.announce("Voice message cancelled.");
    this.render();
  }

  abandon() {
    if (this.mic) this.mic.close();
    this.mic = null;
    this.micOpen = false;
    this.queue = [];
    this.showLevel(0);
  }

  fail(detail) {
    this.abandon();
    clearTimeout(this.timer);
    this.state = "error";
    this.errorText = detail;
    this.render();
    this.timer = setTimeout(() => {
      if (this.state === "error") {
        this.state = "idle";
        this.render();
      }
    }, ERROR_SHOWN_MS);
  }

  // --- from the server ---

  // A `speech` frame for this connection.
  onSpeech(event) {
    if (event.state === "listening" && event.id === this.id && CAPTURING.has(this.state)) {
      this.acked = true;
      for (const pcm of this.queue) this.sendFrame(pcm);
      this.queue = [];
      this.advance();
      this.maybeSendEnd();
    } else if (event.state === "transcribed" && event.id === this.id) {
      clearTimeout(this.timer);
      this.abandon();
      this.state = "idle";
      this.render();
      this.io.announce(`Sent: ${event.text || ""}`);
    }
    // "cancelled" answers our cancel: the page went idle when it sent it.
  }

  // An error frame: true if it was about speech (and is shown here).
  onError(event) {
    const ours = event.id !== undefined && event.id !== null && event.id === this.id;
    const speechCode = event.code === "no_speech" || event.code === "speech_too_long";
    if (!ours && !speechCode) return false;
    if (this.state === "idle" && !ours) return true; // a late answer to an utterance given up
    if (event.code === "no_speech") this.fail("Nothing was heard. Hold the button while you speak.");
    else if (event.code === "speech_too_long") this.fail(event.detail || "That was too long to send as one message.");
    else this.fail(event.detail || event.code || "Voice input failed.");
    return true;
  }

  // The connection changed: an utterance cannot survive a new socket.
  onConnection(open) {
    if (!open && (CAPTURING.has(this.state) || this.state === "transcribing")) {
      this.fail("The connection dropped; nothing was sent.");
    } else {
      this.render();
    }
  }

  // --- the view ---

  showLevel(rms) {
    // The square root spreads speech (RMS 0.01..0.3) over most of the bar.
    const scale = Math.min(1, Math.sqrt(rms) * 1.8);
    this.level.style.transform = `scaleX(${scale.toFixed(3)})`;
  }

  // Listening once both the server and the microphone are.
  advance() {
    if (this.state === "opening" && this.micOpen && this.acked) this.state = "listening";
    this.render();
  }

  render() {
    const { state, mode } = this;
    const capturing = CAPTURING.has(state);
    const ready = this.io.ready();
    this.button.dataset.state = state;
    this.button.dataset.mode = mode;
    this.button.setAttribute("aria-pressed", String(capturing));
    this.button.disabled = state === "transcribing" || (!capturing && !ready);
    this.button.title = ready ? "" : "Voice input needs the live connection (WebSocket)";
    let label = "Hold to talk";
    let line = "";
    switch (state) {
      case "opening":
        label = mode === "toggle" ? "Click to send" : "Release to send";
        line = this.micOpen ? "Getting ready..." : "Starting the microphone...";
        break;
      case "listening":
        label = mode === "toggle" ? "Click to send" : "Release to send";
        line = mode === "toggle"
          ? "Listening. Press again to send, Esc to cancel."
          : "Listening. Release to send, Esc to cancel.";
        break;
      case "ending":
      case "transcribing":
        label = "Sending";
        line = "Transcribing...";
        break;
      case "error":
        line = this.errorText;
        break;
      default:
    }
    this.label.textContent = label;
    this.status.dataset.state = state;
    this.status.hidden = !line;
    this.text.textContent = line;
  }

  debugState() {
    return { state: this.state, mode: this.mode, id: this.id, micOpen: this.micOpen, acked: this.acked, contextRate: this.mic ? this.mic.contextRate : null, ...this.stats };
  }
}

