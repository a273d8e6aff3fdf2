//! zmlx for Zig: a module over the plain C header (translated by the build,
//! since Zig 0.16 has no @cImport), linked with libzmlx from a CMake build.
//!
//!   zig build test    -Dzmlx-include=../include -Dzmlx-lib=../build
//!   zig build example -Dzmlx-include=../include -Dzmlx-lib=../build
const std = @import("std");

pub fn build(b: *std.Build) void {
    const target = b.standardTargetOptions(.{});
    const optimize = b.standardOptimizeOption(.{});
    const include = b.option([]const u8, "zmlx-include", "folder of zmlx.h") orelse "../include";
    const lib_dir = b.option([]const u8, "zmlx-lib", "folder of libzmlx.so") orelse "../build";

    const header = b.addTranslateC(.{
        .root_source_file = .{ .cwd_relative = b.fmt("{s}/zmlx.h", .{include}) },
        .target = target,
        .optimize = optimize,
    });
    const zmlx = b.addModule("zmlx", .{
        .root_source_file = b.path("src/zmlx.zig"),
        .target = target,
        .optimize = optimize,
        .link_libc = true,
        .imports = &.{.{ .name = "zmlx_c", .module = header.createModule() }},
    });
    zmlx.addLibraryPath(.{ .cwd_relative = lib_dir });
    zmlx.addRPath(.{ .cwd_relative = lib_dir });
    zmlx.linkSystemLibrary("zmlx", .{});

    const tests = b.addTest(.{ .root_module = b.createModule(.{
        .root_source_file = b.path("src/tests.zig"),
        .target = target,
        .optimize = optimize,
        .imports = &.{.{ .name = "zmlx", .module = zmlx }},
    }) });
    b.step("test", "run the zmlx Zig tests").dependOn(&b.addRunArtifact(tests).step);

    const example = b.addExecutable(.{ .name = "softmax_zig", .root_module = b.createModule(.{
        .root_source_file = b.path("examples/softmax.zig"),
        .target = target,
        .optimize = optimize,
        .imports = &.{.{ .name = "zmlx", .module = zmlx }},
    }) });
    b.installArtifact(example);
    b.step("example", "build and run examples/softmax.zig").dependOn(&b.addRunArtifact(example).step);
}
