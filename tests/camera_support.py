"""Init scripts that give a browser test page cameras of a chosen kind.

Each replaces the page's getUserMedia (and enumerateDevices) before the page
loads: video comes from a <canvas> the script paints, audio from the
browser's own fake microphone, so calls carry real media through real
RTCPeerConnections.
"""

from __future__ import annotations

# One upright camera (a phone held upright): 360x640, a figure on a moving
# background, so the stranger's stream is tall.
PORTRAIT_CAMERA_JS = """
(() => {
  const devices = navigator.mediaDevices;
  const original = devices.getUserMedia.bind(devices);
  devices.getUserMedia = async (constraints) => {
    const stream = constraints.audio
      ? await original({ audio: constraints.audio, video: false })
      : new MediaStream();
    if (!constraints.video) return stream;
    const canvas = Object.assign(document.createElement("canvas"), { width: 360, height: 640 });
    const c = canvas.getContext("2d");
    const paint = () => {
      const t = performance.now() / 1000;
      const sky = c.createLinearGradient(0, 0, 360, 640);
      sky.addColorStop(0, `hsl(${(t * 20) % 360}, 55%, 62%)`);
      sky.addColorStop(1, "#2d3b63");
      c.fillStyle = sky;
      c.fillRect(0, 0, 360, 640);
      const sway = Math.sin(t * 1.5) * 8;
      c.fillStyle = "#f1c7a1";
      c.beginPath();
      c.arc(180 + sway, 250, 78, 0, Math.PI * 2);
      c.fill();
      c.fillStyle = "#3b2a20";
      c.beginPath();
      c.arc(180 + sway, 222, 80, Math.PI, 0);
      c.fill();
      c.fillStyle = "#e85d75";
      c.beginPath();
      c.ellipse(180 + sway, 560, 150, 170, 0, Math.PI, 0);
      c.fill();
      c.fillStyle = "#2a1a12";
      c.beginPath();
      c.arc(152 + sway, 252, 8, 0, Math.PI * 2);
      c.arc(208 + sway, 252, 8, 0, Math.PI * 2);
      c.fill();
      c.strokeStyle = "#2a1a12";
      c.lineWidth = 5;
      c.beginPath();
      c.arc(180 + sway, 282, 26, 0.15 * Math.PI, 0.85 * Math.PI);
      c.stroke();
    };
    paint();
    setInterval(paint, 66);
    stream.addTrack(canvas.captureStream(15).getVideoTracks()[0]);
    return stream;
  };
})();
"""

# Three cameras: "Front camera" (facing the user, red), "Back camera"
# (facing away, green) and "OBS Virtual Camera" (blue). getUserMedia honours
# deviceId and facingMode; each track's getSettings() says which it is.
CAMERAS = {"front": (208, 48, 48), "back": (48, 176, 64), "obs": (48, 80, 208)}
THREE_CAMERAS_JS = """
(() => {
  const devices = navigator.mediaDevices;
  const original = devices.getUserMedia.bind(devices);
  const enumerate = devices.enumerateDevices.bind(devices);
  const cameras = [
    { deviceId: "front", label: "Front camera", facingMode: "user", rgb: [208, 48, 48] },
    { deviceId: "back", label: "Back camera", facingMode: "environment", rgb: [48, 176, 64] },
    { deviceId: "obs", label: "OBS Virtual Camera", facingMode: null, rgb: [48, 80, 208] },
  ];
  const track = (camera) => {
    const canvas = Object.assign(document.createElement("canvas"), { width: 320, height: 240 });
    const c = canvas.getContext("2d");
    const paint = () => {
      c.fillStyle = `rgb(${camera.rgb.join(",")})`;
      c.fillRect(0, 0, 320, 240);
      c.fillStyle = "#fff";  // something that moves, far from the middle
      c.fillRect((performance.now() / 10) % 300, 4, 20, 12);
    };
    paint();
    setInterval(paint, 66);
    const video = canvas.captureStream(15).getVideoTracks()[0];
    Object.defineProperty(video, "label", { value: camera.label });
    const settings = video.getSettings.bind(video);
    video.getSettings = () => ({
      ...settings(),
      deviceId: camera.deviceId,
      ...(camera.facingMode ? { facingMode: camera.facingMode } : {}),
    });
    return video;
  };
  devices.enumerateDevices = async () => [
    ...(await enumerate()).filter((d) => d.kind !== "videoinput"),
    ...cameras.map((c) => ({
      deviceId: c.deviceId, groupId: c.deviceId, kind: "videoinput", label: c.label,
    })),
  ];
  devices.getUserMedia = async (constraints) => {
    const wanted = constraints.video;
    let camera = null;
    if (wanted) {
      const id = wanted.deviceId?.exact;
      const facing = wanted.facingMode?.exact;
      camera = id
        ? cameras.find((c) => c.deviceId === id)
        : facing
          ? cameras.find((c) => c.facingMode === facing)
          : cameras[0];
      if (!camera) throw new DOMException("no such camera", "OverconstrainedError");
    }
    const stream = constraints.audio
      ? await original({ audio: constraints.audio, video: false })
      : new MediaStream();
    if (camera) stream.addTrack(track(camera));
    return stream;
  };
})();
"""

# Every op the page sends on its WebSocket, in order: window.__sentOps.
SENT_OPS_JS = """
(() => {
  const sent = [];
  Object.defineProperty(window, "__sentOps", { value: sent });
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    try { sent.push(JSON.parse(data).op); } catch { sent.push("?"); }
    return send.call(this, data);
  };
})();
"""
