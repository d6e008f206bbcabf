// The microphone, as 16-bit PCM frames for speech input (docs/protocol.md "Speaking to a room").
//
// getUserMedia, an AudioContext at the speech rate, and an AudioWorklet (capture-worklet.js,
// a static file of its own: a worklet module cannot be inlined under the page's policy)
// that turns float samples into s16le frames of FRAME_MS each. The microphone is open only
// while someone talks: each open() asks for it anew and close() releases it, so the
// browser's recording indicator means exactly that.

// The rate and format the server is told in `speech start`.
export const SPEECH_RATE = 16000;
// One binary frame per 100 ms (3,200 bytes at 16 kHz): few enough frames for the socket
// and the server's loop, short enough that releasing the button loses nothing audible.
export const FRAME_MS = 100;

export class MicrophoneError extends Error {
  constructor(message, reason) {
    super(message);
    this.reason = reason; // "denied" | "missing" | "unsupported" | "failed"
  }
}

function explain(err) {
  const name = err && err.name;
  if (name === "NotAllowedError" || name === "SecurityError") {
    return new MicrophoneError("The microphone is blocked: allow it in the browser's site settings.", "denied");
  }
  if (name === "NotFoundError" || name === "OverconstrainedError") {
    return new MicrophoneError("No microphone was found.", "missing");
  }
  if (name === "NotReadableError") {
    return new MicrophoneError("The microphone is in use by another program.", "failed");
  }
  return new MicrophoneError(`The microphone could not start (${(err && err.message) || err}).`, "failed");
}

export class Microphone {
  // onFrame(arrayBuffer, {peak, rms}) for each frame, in order.
  constructor({ workletUrl, onFrame, rate = SPEECH_RATE, frameMs = FRAME_MS }) {
    this.workletUrl = workletUrl;
    this.onFrame = onFrame;
    this.rate = rate;
    this.frameSamples = Math.round((rate * frameMs) / 1000);
    this.stream = null;
    this.ctx = null;
    this.node = null;
    this.closed = false;
    this.flushed = null; // resolves when the worklet has sent its last partial frame
    this.contextRate = null; // for diagnostics: 16000 unless the worklet resamples
  }

  static supported() {
    return Boolean(
      navigator.mediaDevices && navigator.mediaDevices.getUserMedia && window.AudioContext && window.AudioWorkletNode,
    );
  }

  async open() {
    if (!Microphone.supported()) {
      throw new MicrophoneError("This browser cannot record audio here (it needs HTTPS).", "unsupported");
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      throw explain(err);
    }
    if (this.closed) {
      this.release();
      return false;
    }
    try {
      let source;
      try {
        // Chromium resamples the microphone to the context's rate.
        this.ctx = new AudioContext({ sampleRate: this.rate });
        source = this.ctx.createMediaStreamSource(this.stream);
      } catch {
        // A browser that cannot connect a microphone to a context at another rate than the
        // hardware's: the worklet resamples instead.
        if (this.ctx) this.ctx.close();
        this.ctx = new AudioContext();
        source = this.ctx.createMediaStreamSource(this.stream);
      }
      this.contextRate = this.ctx.sampleRate;
      await this.ctx.audioWorklet.addModule(this.workletUrl);
      if (this.closed) {
        this.release();
        return false;
      }
      this.node = new AudioWorkletNode(this.ctx, "parley-capture", {
        numberOfInputs: 1,
        numberOfOutputs: 0,
        channelCount: 1,
        channelCountMode: "explicit",
        processorOptions: { targetRate: this.rate, frameSamples: this.frameSamples },
      });
      this.node.port.onmessage = (event) => this.fromWorklet(event.data);
      source.connect(this.node);
      if (this.ctx.state === "suspended") await this.ctx.resume();
    } catch (err) {
      this.release();
      throw explain(err);
    }
    if (this.closed) {
      this.release();
      return false;
    }
    return true;
  }

  fromWorklet(data) {
    if (data.type === "frame") {
      if (!this.closed) this.onFrame(data.pcm, { peak: data.peak, rms: data.rms });
    } else if (data.type === "flushed" && this.flushed) {
      this.flushed.resolve();
    }
  }

  // Resolves once every sample captured so far has been handed to onFrame.
  flush() {
    if (!this.node || this.closed) return Promise.resolve();
    if (!this.flushed) {
      let resolve;
      const promise = new Promise((r) => {
        resolve = r;
      });
      this.flushed = { promise, resolve };
      this.node.port.postMessage({ type: "flush" });
    }
    return this.flushed.promise;
  }

  close() {
    this.closed = true;
    this.release();
  }

  release() {
    if (this.node) {
      this.node.port.postMessage({ type: "stop" });
      this.node.port.onmessage = null;
      this.node.disconnect();
      this.node = null;
    }
    if (this.stream) {
      for (const track of this.stream.getTracks()) track.stop();
      this.stream = null;
    }
    if (this.ctx) {
      this.ctx.close();
      this.ctx = null;
    }
    if (this.flushed) this.flushed.resolve();
  }
}
