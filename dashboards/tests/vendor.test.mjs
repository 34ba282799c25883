// The vendored files match assets/vendor/VERSIONS (sha256) and the pinned npm
// package they were copied from; pages load nothing from another origin.

import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { DASHBOARDS } from './support/server.mjs';

const VENDOR = join(DASHBOARDS, 'assets', 'vendor');
const sha256 = (path) => createHash('sha256').update(readFileSync(path)).digest('hex');

function versions() {
  return readFileSync(join(VENDOR, 'VERSIONS'), 'utf8').split('\n')
    .filter((l) => l.trim() && !l.startsWith('#'))
    .map((l) => {
      const [pkg, version, file, sum] = l.trim().split(/\s+/);
      return { pkg, version, file, sum };
    });
}

test('every vendored file is listed in VERSIONS with its sha256', () => {
  const listed = versions();
  const files = readdirSync(VENDOR).filter((f) => f !== 'VERSIONS').sort();
  assert.deepEqual(listed.map((v) => v.file).sort(), files);
  for (const v of listed) assert.equal(sha256(join(VENDOR, v.file)), v.sum, `${v.file} changed without VERSIONS`);
});

test('vendored versions are the ones pinned in package.json', () => {
  const pkg = JSON.parse(readFileSync(join(DASHBOARDS, 'package.json'), 'utf8'));
  for (const v of versions()) {
    assert.equal(pkg.devDependencies[v.pkg], v.version, `${v.pkg} pinned at ${v.version}`);
    const installed = join(DASHBOARDS, 'node_modules', v.pkg, 'package.json');
    if (existsSync(installed)) assert.equal(JSON.parse(readFileSync(installed, 'utf8')).version, v.version);
  }
  // the copies are byte-identical to the package (when installed)
  const map = { 'uPlot.esm.js': 'dist/uPlot.esm.js', 'uPlot.min.css': 'dist/uPlot.min.css', 'uPlot.LICENSE': 'LICENSE' };
  for (const [file, src] of Object.entries(map)) {
    const from = join(DASHBOARDS, 'node_modules', 'uplot', src);
    if (existsSync(from)) assert.equal(sha256(join(VENDOR, file)), sha256(from), `${file} is not the package's ${src}`);
  }
});

test('pages reference no other origin', () => {
  const files = ['index.html', 'me.html', ...readdirSync(join(DASHBOARDS, 'assets')).filter((f) => /\.(js|css)$/.test(f)).map((f) => join('assets', f))];
  for (const f of files) {
    const text = readFileSync(join(DASHBOARDS, f), 'utf8');
    assert.doesNotMatch(text, /(src|href)=["']https?:|import[^;]+from\s+["']https?:|url\(["']?https?:/, `${f} loads from another origin`);
  }
});
