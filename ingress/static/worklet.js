// voicegrid demo page: the microphone's AudioWorklet. It hands each 128-sample render quantum
// (Float32, the AudioContext's rate) to the page, which resamples it to the session's rate.
class CaptureProcessor extends AudioWorkletProcessor {
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel && channel.length) {
      this.port.postMessage(channel.slice(0));
    }
    return true;
  }
}
registerProcessor("voicegrid-capture", CaptureProcessor);
