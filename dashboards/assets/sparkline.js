// A tiny canvas sparkline (60 per-minute averages, oldest first, null = no sample).
// Cheaper than a uPlot instance per tile when 500 tiles are on screen.

/** Draws `values` into `canvas` (line in `color`), scaled so `normMs` sits at 2/3 height; points past it amber. */
export function drawSparkline(canvas, values, normMs, color = '#3b82f6') {
  // The canvas keeps its own fixed pixel size (set at creation) and CSS stretches
  // it, so drawing never reads layout: 500 tiles redraw without reflow.
  const w = canvas.width;
  const h = canvas.height;
  const ctx = canvas.getContext('2d');
  ctx.clearRect(0, 0, w, h);
  if (!Array.isArray(values) || values.length === 0) return;
  let max = normMs * 1.5;
  for (const v of values) if (v != null && v > max) max = v;
  const n = values.length;
  const step = n > 1 ? w / (n - 1) : w;
  const y = (v) => h - 1 - (Math.min(v, max) / max) * (h - 2);

  // norm line
  ctx.strokeStyle = 'rgba(128,128,128,0.35)';
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, y(normMs));
  ctx.lineTo(w, y(normMs));
  ctx.stroke();

  ctx.lineWidth = 2;
  ctx.strokeStyle = color;
  ctx.beginPath();
  let pen = false;
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) {
      pen = false;
      continue;
    }
    const x = i * step;
    if (pen) ctx.lineTo(x, y(v));
    else ctx.moveTo(x, y(v));
    pen = true;
  }
  ctx.stroke();
  // isolated minutes have no neighbour to draw a line to: mark them with a dot
  for (let i = 0; i < n; i++) {
    const v = values[i];
    if (v == null || !Number.isFinite(v)) continue;
    const alone = (i === 0 || values[i - 1] == null) && (i === n - 1 || values[i + 1] == null);
    if (v > normMs) ctx.fillStyle = '#f59e0b';
    else if (alone) ctx.fillStyle = color;
    else continue;
    ctx.fillRect(i * step - 2, y(v) - 2, 4, 4);
  }
}
