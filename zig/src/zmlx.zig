//! Idiomatic Zig over zmlx's C API: statuses become an error set (the
//! library's message stays readable through `lastError`), every handle has
//! `deinit`, shapes are slices, element types map to dtypes at comptime.
const std = @import("std");
pub const c = @import("zmlx_c");

pub const Error = error{
    NullArg,
    InvalidArg,
    Shape,
    Dtype,
    OutOfMemory,
    NoDevice,
    Backend,
    Compile,
    Launch,
    Unsupported,
    Io,
    Parse,
    Internal,
};

/// A status as an error (ZMLX_OK as success).
pub fn check(st: c.zmlx_status) Error!void {
    return switch (st) {
        c.ZMLX_OK => {},
        c.ZMLX_ERR_NULL_ARG => error.NullArg,
        c.ZMLX_ERR_INVALID_ARG => error.InvalidArg,
        c.ZMLX_ERR_SHAPE => error.Shape,
        c.ZMLX_ERR_DTYPE => error.Dtype,
        c.ZMLX_ERR_OUT_OF_MEMORY => error.OutOfMemory,
        c.ZMLX_ERR_NO_DEVICE => error.NoDevice,
        c.ZMLX_ERR_BACKEND => error.Backend,
        c.ZMLX_ERR_COMPILE => error.Compile,
        c.ZMLX_ERR_LAUNCH => error.Launch,
        c.ZMLX_ERR_UNSUPPORTED => error.Unsupported,
        c.ZMLX_ERR_IO => error.Io,
        c.ZMLX_ERR_PARSE => error.Parse,
        else => error.Internal,
    };
}

/// What went wrong in this thread's last failed call (line, column and a
/// caret for a bad expression; the compiler log for a compile failure).
pub fn lastError() []const u8 {
    return std.mem.span(c.zmlx_last_error());
}

pub fn version() []const u8 {
    return std.mem.span(c.zmlx_version_string());
}

/// The dtype of a Zig element type, at compile time.
pub fn dtypeOf(comptime T: type) c.zmlx_dtype {
    return switch (T) {
        f32 => c.ZMLX_F32,
        f64 => c.ZMLX_F64,
        f16 => c.ZMLX_F16,
        i32 => c.ZMLX_I32,
        u32 => c.ZMLX_U32,
        i64 => c.ZMLX_I64,
        i8 => c.ZMLX_I8,
        u8 => c.ZMLX_U8,
        bool => c.ZMLX_BOOL,
        else => @compileError("zmlx: no dtype for " ++ @typeName(T)),
    };
}

pub const Device = struct {
    handle: *c.zmlx_device,

    /// The default device (CUDA when present, else OpenCL; ZMLX_BACKEND overrides).
    pub fn default() Error!Device {
        var d: ?*c.zmlx_device = null;
        try check(c.zmlx_default_device(&d));
        return .{ .handle = d.? };
    }

    pub fn synchronize(self: Device) Error!void {
        try check(c.zmlx_device_synchronize(self.handle));
    }
};

/// A reference-counted n-dimensional array on a device.
pub const Array = struct {
    handle: *c.zmlx_array,

    fn wrap(p: ?*c.zmlx_array) Array {
        return .{ .handle = p.? };
    }

    /// Uploads `data` (row-major, shape's element count) to `device` (null: default).
    pub fn fromSlice(comptime T: type, device: ?Device, dims: []const i64, data: []const T) Error!Array {
        var n: i64 = 1;
        for (dims) |s| n *= s;
        if (n != @as(i64, @intCast(data.len))) return error.Shape;
        var out: ?*c.zmlx_array = null;
        try check(c.zmlx_array_from_host(if (device) |d| d.handle else null, dtypeOf(T),
            @intCast(dims.len), dims.ptr, data.ptr, &out));
        return wrap(out);
    }

    pub fn full(comptime T: type, device: ?Device, dims: []const i64, value: f64) Error!Array {
        var out: ?*c.zmlx_array = null;
        try check(c.zmlx_array_full(if (device) |d| d.handle else null, dtypeOf(T),
            @intCast(dims.len), dims.ptr, value, &out));
        return wrap(out);
    }

    pub fn deinit(self: Array) void {
        _ = c.zmlx_array_release(self.handle);
    }

    /// Another reference to the same array (deinit both).
    pub fn retain(self: Array) Array {
        _ = c.zmlx_array_retain(self.handle);
        return self;
    }

    pub fn shape(self: Array) []const i64 {
        const n: usize = @intCast(c.zmlx_array_ndim(self.handle));
        return c.zmlx_array_shape(self.handle)[0..n];
    }

    pub fn size(self: Array) usize {
        return @intCast(c.zmlx_array_size(self.handle));
    }

    /// The elements, downloaded into a new slice (the caller frees it).
    pub fn toSlice(self: Array, comptime T: type, allocator: std.mem.Allocator) ![]T {
        if (c.zmlx_array_dtype(self.handle) != dtypeOf(T)) return error.Dtype;
        const out = try allocator.alloc(T, self.size());
        errdefer allocator.free(out);
        try check(c.zmlx_array_to_host(self.handle, out.ptr, out.len * @sizeOf(T)));
        return out;
    }
};

fn handles(comptime N: usize, arrays: [N]Array) [N]?*c.zmlx_array {
    var h: [N]?*c.zmlx_array = undefined;
    for (arrays, 0..) |a, i| h[i] = a.handle;
    return h;
}

/// An elementwise op from an expression ("x * sigmoid(x) * y"), with its
/// symbolic VJP.
pub const Op = struct {
    handle: *c.zmlx_op,

    pub fn elementwise(expr: [:0]const u8, comptime names: []const [:0]const u8) Error!Op {
        var ptrs: [names.len][*c]const u8 = undefined;
        inline for (names, 0..) |n, i| ptrs[i] = n.ptr;
        var out: ?*c.zmlx_op = null;
        try check(c.zmlx_elementwise(expr.ptr, &ptrs, @intCast(names.len), null, 0, &out));
        return .{ .handle = out.? };
    }

    pub fn deinit(self: Op) void {
        _ = c.zmlx_op_destroy(self.handle);
    }

    pub fn call(self: Op, inputs: []const Array) Error!Array {
        var h: [16]?*c.zmlx_array = undefined;
        for (inputs, 0..) |a, i| h[i] = a.handle;
        var out: ?*c.zmlx_array = null;
        try check(c.zmlx_op_call(self.handle, &h, @intCast(inputs.len), null, null, &out));
        return Array.wrap(out);
    }

    /// Gradients of <cotangent, op(inputs)> with respect to each input, into `grads`.
    pub fn vjp(self: Op, inputs: []const Array, cotangent: Array, grads: []Array) Error!void {
        var h: [16]?*c.zmlx_array = undefined;
        var g: [16]?*c.zmlx_array = undefined;
        for (inputs, 0..) |a, i| h[i] = a.handle;
        try check(c.zmlx_op_vjp(self.handle, &h, @intCast(inputs.len), null, cotangent.handle, null, &g));
        for (grads, 0..) |*out, i| out.* = Array.wrap(g[i]);
    }
};

/// A dialect kernel (the mx.fast.metal_kernel analog): names and a body.
pub const Kernel = struct {
    handle: *c.zmlx_kernel,

    pub fn init(name: [:0]const u8, comptime inputs: []const [:0]const u8,
        comptime outputs: []const [:0]const u8, source: [:0]const u8) Error!Kernel {
        const in_ptrs = comptime blk: {
            var p: [inputs.len][*c]const u8 = undefined;
            for (inputs, 0..) |n, i| p[i] = n.ptr;
            break :blk p;
        };
        const out_ptrs = comptime blk: {
            var p: [outputs.len][*c]const u8 = undefined;
            for (outputs, 0..) |n, i| p[i] = n.ptr;
            break :blk p;
        };
        var d = std.mem.zeroes(c.zmlx_kernel_desc);
        d.name = name.ptr;
        d.input_names = &in_ptrs;
        d.n_inputs = @intCast(inputs.len);
        d.output_names = &out_ptrs;
        d.n_outputs = @intCast(outputs.len);
        d.source = source.ptr;
        var out: ?*c.zmlx_kernel = null;
        try check(c.zmlx_kernel_create(&d, &out));
        return .{ .handle = out.? };
    }

    pub fn deinit(self: Kernel) void {
        _ = c.zmlx_kernel_destroy(self.handle);
    }

    /// One output like input 0, one thread per element (ZMLX's defaults).
    pub fn apply(self: Kernel, inputs: []const Array) Error!Array {
        var h: [16]?*c.zmlx_array = undefined;
        for (inputs, 0..) |a, i| h[i] = a.handle;
        var out: [1]?*c.zmlx_array = .{null};
        try check(c.zmlx_kernel_apply(self.handle, &h, null, &out));
        return Array.wrap(out[0]);
    }
};

fn unary(comptime f: anytype, x: Array) Error!Array {
    var out: ?*c.zmlx_array = null;
    try check(f(x.handle, &out));
    return Array.wrap(out);
}

pub fn softmax(x: Array) Error!Array {
    return unary(c.zmlx_softmax, x);
}
pub fn logSoftmax(x: Array) Error!Array {
    return unary(c.zmlx_log_softmax, x);
}
pub fn silu(x: Array) Error!Array {
    return unary(c.zmlx_silu, x);
}
pub fn gelu(x: Array) Error!Array {
    return unary(c.zmlx_gelu, x);
}

pub fn rmsnorm(x: Array, weight: ?Array, eps: f64) Error!Array {
    var out: ?*c.zmlx_array = null;
    try check(c.zmlx_rmsnorm(x.handle, if (weight) |w| w.handle else null, eps, &out));
    return Array.wrap(out);
}

pub fn layernorm(x: Array, weight: ?Array, bias: ?Array, eps: f64) Error!Array {
    var out: ?*c.zmlx_array = null;
    try check(c.zmlx_layernorm(x.handle, if (weight) |w| w.handle else null,
        if (bias) |b| b.handle else null, eps, &out));
    return Array.wrap(out);
}

/// Rotary embedding of x [batch, seq, heads, head_dim] (half-split, base 10000).
pub fn rope(x: Array) Error!Array {
    var out: ?*c.zmlx_array = null;
    try check(c.zmlx_rope(x.handle, null, &out));
    return Array.wrap(out);
}

/// Mean softmax cross-entropy of logits [..., vocab] against i32 targets.
pub fn crossEntropy(logits: Array, targets: Array) Error!Array {
    var out: ?*c.zmlx_array = null;
    try check(c.zmlx_cross_entropy(logits.handle, targets.handle, null, &out, null));
    return Array.wrap(out);
}

pub fn sum(x: Array) Error!Array {
    var out: ?*c.zmlx_array = null;
    try check(c.zmlx_sum(x.handle, null, 0, 0, &out));
    return Array.wrap(out);
}

pub fn mul(a: Array, b: Array) Error!Array {
    var out: ?*c.zmlx_array = null;
    try check(c.zmlx_mul(a.handle, b.handle, &out));
    return Array.wrap(out);
}

/// The value of f(inputs) (one element) and its gradient with respect to
/// every input; `f` is a Zig function of zmlx ops, called through a C
/// trampoline while the ops record themselves.
pub fn valueAndGrad(comptime f: fn (inputs: []const Array) Error!Array, inputs: []const Array,
    grads: []Array) Error!Array {
    const Tramp = struct {
        fn call(_: ?*anyopaque, in: [*c]const ?*c.zmlx_array, n: c_int, out: [*c]?*c.zmlx_array) callconv(.c) c.zmlx_status {
            var arrays: [16]Array = undefined;
            const count: usize = @intCast(n);
            for (0..count) |i| arrays[i] = Array.wrap(in[i]);
            const y = f(arrays[0..count]) catch return c.ZMLX_ERR_INVALID_ARG;
            out[0] = y.handle;
            return c.ZMLX_OK;
        }
    };
    var h: [16]?*c.zmlx_array = undefined;
    var g: [16]?*c.zmlx_array = undefined;
    for (inputs, 0..) |a, i| h[i] = a.handle;
    var value: ?*c.zmlx_array = null;
    try check(c.zmlx_value_and_grad(Tramp.call, null, &h, @intCast(inputs.len), null, 0, &value, &g));
    for (grads, 0..) |*out, i| out.* = Array.wrap(g[i]);
    return Array.wrap(value);
}

pub const CacheStats = c.zmlx_cache_stats;

pub fn cacheStats() Error!CacheStats {
    var s: CacheStats = undefined;
    try check(c.zmlx_cache_get_stats(&s));
    return s;
}
