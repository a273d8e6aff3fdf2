//! zmlx from Zig on the default device (PoCL in CI) against references
//! computed here in f64: the kernel object, an expression and its VJP,
//! softmax, rmsnorm, cross-entropy, autograd through a Zig function, a bad
//! expression's error and message, cache statistics.
const std = @import("std");
const zmlx = @import("zmlx");
const testing = std.testing;
const alloc = testing.allocator;

fn expectClose(got: []const f32, want: []const f64, tol: f64) !void {
    try testing.expectEqual(want.len, got.len);
    for (got, want, 0..) |g, w, i| {
        if (!(@abs(@as(f64, g) - w) <= tol * (1 + @abs(w)))) {
            std.debug.print("element {d}: got {d}, want {d}\n", .{ i, g, w });
            return error.TestExpectedApproxEqAbs;
        }
    }
}

fn sample(comptime n: usize, seed: u64) [n]f32 {
    var prng = std.Random.DefaultPrng.init(seed);
    var v: [n]f32 = undefined;
    for (&v) |*x| x.* = prng.random().float(f32) * 4 - 2;
    return v;
}

test "kernel object: a user kernel against its reference" {
    const k = try zmlx.Kernel.init("axpb", &.{ "x", "y" }, &.{"out"},
        "uint i = thread_position_in_grid.x;\nout_store(i, x_load(i) * y_load(i) + 1.0f);\n");
    defer k.deinit();
    const xs = sample(300, 1);
    const ys = sample(300, 2);
    const x = try zmlx.Array.fromSlice(f32, null, &.{300}, &xs);
    defer x.deinit();
    const y = try zmlx.Array.fromSlice(f32, null, &.{300}, &ys);
    defer y.deinit();
    const out = try k.apply(&.{ x, y });
    defer out.deinit();
    const got = try out.toSlice(f32, alloc);
    defer alloc.free(got);
    var want: [300]f64 = undefined;
    for (&want, xs, ys) |*w, a, b| w.* = @as(f64, a) * b + 1;
    try expectClose(got, &want, 1e-6);
}

test "expression op and its VJP" {
    const op = try zmlx.Op.elementwise("x * sigmoid(x) * y", &.{ "x", "y" });
    defer op.deinit();
    const xs = sample(64, 3);
    const ys = sample(64, 4);
    const x = try zmlx.Array.fromSlice(f32, null, &.{ 8, 8 }, &xs);
    defer x.deinit();
    const y = try zmlx.Array.fromSlice(f32, null, &.{ 8, 8 }, &ys);
    defer y.deinit();
    const out = try op.call(&.{ x, y });
    defer out.deinit();
    try testing.expectEqualSlices(i64, &.{ 8, 8 }, out.shape());
    const ones = try zmlx.Array.full(f32, null, &.{ 8, 8 }, 1);
    defer ones.deinit();
    var grads: [2]zmlx.Array = undefined;
    try op.vjp(&.{ x, y }, ones, &grads);
    defer for (grads) |g| g.deinit();
    const got = try out.toSlice(f32, alloc);
    defer alloc.free(got);
    const gx = try grads[0].toSlice(f32, alloc);
    defer alloc.free(gx);
    var want: [64]f64 = undefined;
    var want_gx: [64]f64 = undefined;
    for (xs, ys, 0..) |a, b, i| {
        const s = 1 / (1 + @exp(-@as(f64, a)));
        want[i] = a * s * b;
        want_gx[i] = b * (s + a * s * (1 - s));
    }
    try expectClose(got, &want, 1e-5);
    try expectClose(gx, &want_gx, 1e-5);
}

test "softmax and rmsnorm against references" {
    const rows = 5;
    const cols = 40;
    const xs = sample(rows * cols, 5);
    const ws = sample(cols, 6);
    const x = try zmlx.Array.fromSlice(f32, null, &.{ rows, cols }, &xs);
    defer x.deinit();
    const w = try zmlx.Array.fromSlice(f32, null, &.{cols}, &ws);
    defer w.deinit();
    const sm = try zmlx.softmax(x);
    defer sm.deinit();
    const rn = try zmlx.rmsnorm(x, w, 1e-6);
    defer rn.deinit();
    const got_sm = try sm.toSlice(f32, alloc);
    defer alloc.free(got_sm);
    const got_rn = try rn.toSlice(f32, alloc);
    defer alloc.free(got_rn);
    var want_sm: [rows * cols]f64 = undefined;
    var want_rn: [rows * cols]f64 = undefined;
    for (0..rows) |r| {
        const row = xs[r * cols .. (r + 1) * cols];
        var m: f64 = -std.math.inf(f64);
        for (row) |v| m = @max(m, v);
        var s: f64 = 0;
        var ss: f64 = 0;
        for (row) |v| {
            s += @exp(@as(f64, v) - m);
            ss += @as(f64, v) * v;
        }
        const inv = 1 / @sqrt(ss / cols + 1e-6);
        for (row, 0..) |v, j| {
            want_sm[r * cols + j] = @exp(@as(f64, v) - m) / s;
            want_rn[r * cols + j] = v * inv * ws[j];
        }
    }
    try expectClose(got_sm, &want_sm, 1e-5);
    try expectClose(got_rn, &want_rn, 1e-5);
}

fn siluSum(inputs: []const zmlx.Array) zmlx.Error!zmlx.Array {
    const y = try zmlx.silu(inputs[0]);
    defer y.deinit();
    return zmlx.sum(y);
}

test "valueAndGrad through a Zig function" {
    const xs = sample(33, 7);
    const x = try zmlx.Array.fromSlice(f32, null, &.{33}, &xs);
    defer x.deinit();
    var grads: [1]zmlx.Array = undefined;
    const value = try zmlx.valueAndGrad(siluSum, &.{x}, &grads);
    defer value.deinit();
    defer grads[0].deinit();
    const v = try value.toSlice(f32, alloc);
    defer alloc.free(v);
    const g = try grads[0].toSlice(f32, alloc);
    defer alloc.free(g);
    var want_v: f64 = 0;
    var want_g: [33]f64 = undefined;
    for (xs, 0..) |a, i| {
        const s = 1 / (1 + @exp(-@as(f64, a)));
        want_v += a * s;
        want_g[i] = s + a * s * (1 - s);
    }
    try expectClose(v, &.{want_v}, 1e-5);
    try expectClose(g, &want_g, 1e-5);
}

test "cross-entropy against a reference" {
    const xs = sample(3 * 7, 8);
    const targets = [_]i32{ 2, 0, 6 };
    const logits = try zmlx.Array.fromSlice(f32, null, &.{ 3, 7 }, &xs);
    defer logits.deinit();
    const t = try zmlx.Array.fromSlice(i32, null, &.{3}, &targets);
    defer t.deinit();
    const loss = try zmlx.crossEntropy(logits, t);
    defer loss.deinit();
    const got = try loss.toSlice(f32, alloc);
    defer alloc.free(got);
    var want: f64 = 0;
    for (0..3) |r| {
        const row = xs[r * 7 .. (r + 1) * 7];
        var m: f64 = -std.math.inf(f64);
        for (row) |v| m = @max(m, v);
        var s: f64 = 0;
        for (row) |v| s += @exp(@as(f64, v) - m);
        want += m + @log(s) - row[@intCast(targets[r])];
    }
    try expectClose(got, &.{want / 3}, 1e-5);
}

test "a bad expression is error.Parse with line, column and caret" {
    try testing.expectError(error.Parse, zmlx.Op.elementwise("x +* y", &.{ "x", "y" }));
    const msg = zmlx.lastError();
    try testing.expect(std.mem.indexOf(u8, msg, "^") != null);
    try testing.expect(std.mem.startsWith(u8, msg, "1:4:")); // line 1, column 4
    try testing.expect(std.mem.indexOf(u8, msg, "x +* y") != null);
    // a shape mismatch names both shapes
    const a = try zmlx.Array.full(f32, null, &.{ 2, 3 }, 1);
    defer a.deinit();
    const b = try zmlx.Array.full(f32, null, &.{ 4, 5 }, 1);
    defer b.deinit();
    try testing.expectError(error.Shape, zmlx.mul(a, b));
    try testing.expect(std.mem.indexOf(u8, zmlx.lastError(), "[2, 3]") != null);
}

test "cache statistics count the kernels" {
    const s = try zmlx.cacheStats();
    try testing.expect(s.memory_hits + s.disk_hits + s.misses > 0);
}
