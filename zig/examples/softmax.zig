//! The smallest zmlx program in Zig: a row softmax on the default device.
const std = @import("std");
const zmlx = @import("zmlx");

pub fn main() !void {
    const data = [_]f32{ 1, 2, 3, 4, 1, 1, 1, 1 };
    const x = try zmlx.Array.fromSlice(f32, null, &.{ 2, 4 }, &data);
    defer x.deinit();
    const y = zmlx.softmax(x) catch |e| {
        std.debug.print("softmax failed: {s}\n", .{zmlx.lastError()});
        return e;
    };
    defer y.deinit();
    const out = try y.toSlice(f32, std.heap.page_allocator);
    defer std.heap.page_allocator.free(out);
    std.debug.print("zmlx {s}: softmax of [[1 2 3 4] [1 1 1 1]] = {any}\n", .{ zmlx.version(), out });
}
