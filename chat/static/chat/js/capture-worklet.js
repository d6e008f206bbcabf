// The microphone's AudioWorklet processor: speech input as signed 16-bit PCM frames.
//
// Loaded with audioWorklet.addModule() by mic.js; it runs on the audio thread, so it
// imports nothing and keeps no DOM. Input: float32 blocks (128 samples) at the context's
// rate, down-mixed to mono by the node (channelCount 1, "explicit"). Output, through the
// port, one message per frame:
//   {type: "frame", pcm: ArrayBuffer (s16le mono at targetRate), peak, rms}
// where peak and rms are the frame's level in 0..1, for the meter. {type: "flush"} from
// the main thread sends the partial frame that is left, then {type: "flushed"}.
//
// Chromium runs an AudioContext at 16 kHz and resamples the microphone itself; a context
// that had to keep the hardware rate (another browser) is resampled here: each output
// sample is the mean of the input samples since the previous one (a box filter, enough
// against aliasing for speech recognition), or the last value held when upsampling.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.targetRate = opts.targetRate || 16000;
    this.frameSamples = opts.frameSamples || 1600;
    this.step = sampleRate / this.targetRate; // input samples per output sample
    this.direct = Math.abs(this.step - 1) < 1e-9;
    this.pos = 0;
    this.acc = 0;
    this.count = 0;
    this.last = 0;
    this.newFrame();
    this.running = true;
    this.port.onmessage = (event) => {
      const kind = event.data && event.data.type;
      if (kind === "flush") {
        if (this.filled) this.post();
        this.port.postMessage({ type: "flushed" });
      } else if (kind === "stop") {
        this.running = false;
      }
    };
  }

  newFrame() {
    this.frame = new Int16Array(this.frameSamples);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }

  push(value) {
    const v = value > 1 ? 1 : value < -1 ? -1 : value;
    this.frame[this.filled] = Math.round(v < 0 ? v * 32768 : v * 32767);
    this.filled += 1;
    this.sumSquares += v * v;
    const magnitude = v < 0 ? -v : v;
    if (magnitude > this.peak) this.peak = magnitude;
    if (this.filled === this.frameSamples) this.post();
  }

  post() {
    const pcm = this.frame.buffer.slice(0, this.filled * 2);
    const rms = Math.sqrt(this.sumSquares / this.filled);
    this.port.postMessage({ type: "frame", pcm, peak: this.peak, rms }, [pcm]);
    this.newFrame();
  }

  process(inputs) {
    if (!this.running) return false;
    const input = inputs[0];
    if (!input || !input.length) return true; // not connected yet, or between sources
    const samples = input[0];
    if (this.direct) {
      for (let i = 0; i < samples.length; i += 1) this.push(samples[i]);
      return true;
    }
    for (let i = 0; i < samples.length; i += 1) {
      this.acc += samples[i];
      this.count += 1;
      this.pos += 1;
      while (this.pos >= this.step) {
        this.pos -= this.step;
        if (this.count) {
          this.last = this.acc / this.count;
          this.acc = 0;
          this.count = 0;
        }
        this.push(this.last);
      }
    }
    return true;
  }
}

registerProcessor("parley-capture", CaptureProcessor);
