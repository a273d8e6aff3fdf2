/*
 * libFuzzer target for the expression language: any bytes go through parse,
 * print + re-parse, VJP, JVP, emission and evaluation. Crashes, leaks and
 * sanitizer reports are failures, and so are two oracles checked here:
 *   - text printed by zmlxi_expr_to_string parses back;
 *   - emitted C contains no identifier outside the dialect's math names,
 *     the temporaries and the ctx text given below (user text never leaks
 *     into kernel source).
 *
 *   clang -fsanitize=fuzzer,address,undefined -Iinclude -Isrc \
 *     tests/fuzz/fuzz_expr.c src/gen/expr_*.c src/runtime/error.c \
 *     src/runtime/util.c -lm -o fuzz_expr && ./fuzz_expr -max_total_time=60
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/expr.h"

static const char *const INPUTS[] = {"x", "y", "z"};
static const char *const PARAMS[] = {"alpha", "beta"};

/* Derivative graphs have more inputs (cotangents, tangents) and roots; the
 * second-order VJP below has the most: 8 inputs, 4 roots. */
static const char *const IN_TEXT[] = {"in_load(0)", "in_load(1)", "in_load(2)", "in_load(3)",
                                      "in_load(4)", "in_load(5)", "in_load(6)", "in_load(7)"};
static const char *const PAR_TEXT[] = {"param(0)", "param(1)"};
static const char *const STORE[] = {"out_store(0, %s)", "out_store(1, %s)", "out_store(2, %s)",
                                    "out_store(3, %s)", "out_store(4, %s)", "out_store(5, %s)",
                                    "out_store(6, %s)", "out_store(7, %s)"};

static int ident_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

static int allowed(const char *s, size_t n) {
  static const char *const ok[] = {
      "float", "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "fabs",
      "sin", "cos", "tan", "tanh", "sinh", "cosh", "asin", "acos", "atan", "atan2", "erf",
      "erfc", "floor", "ceil", "round", "fmin", "fmax", "pow", "ZMLX_INF", "ZMLX_NAN",
      "in_load", "param", "out_store", NULL};
  for (int i = 0; ok[i]; i++)
    if (strlen(ok[i]) == n && memcmp(ok[i], s, n) == 0) return 1;
  return n >= 2 && s[0] == 't' && strspn(s + 1, "0123456789") == n - 1;
}

static void check_identifiers(const char *src) {
  for (const char *p = src; *p;) {
    if (*p >= '0' && *p <= '9') { /* a number, with its '.', 'e', sign and 'f' */
      while (ident_char(*p) || *p == '.' || ((*p == '-' || *p == '+') && p[-1] == 'e')) p++;
    } else if (ident_char(*p)) {
      const char *s = p;
      while (ident_char(*p)) p++;
      if (!allowed(s, (size_t)(p - s))) {
        fprintf(stderr, "foreign identifier '%.*s' in emitted source:\n%s\n", (int)(p - s), s,
                src);
        abort();
      }
    } else {
      p++;
    }
  }
}

static void emit_and_eval(const zmlx_expr *e) {
  if (e->n_inputs > 8 || e->n_roots > 8) return;
  zmlx_expr_emit_ctx ctx = {IN_TEXT, PAR_TEXT, STORE, NULL, NULL};
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  if (zmlxi_expr_emit(e, &ctx, &sb) == ZMLX_OK && sb.data) check_identifiers(sb.data);
  zmlxi_sb_free(&sb);
  double in[8] = {0.7, -1.3, 2.0, 1.0, 0.5, -0.25, 1.5, -2.0}, par[2] = {0.1, 3.0}, out[8];
  zmlxi_expr_eval(e, in, par, out);
}

static void round_trip(const zmlx_expr *e) {
  char *s = NULL;
  if (zmlxi_expr_to_string(e, &s) != ZMLX_OK) return;
  zmlx_expr *back = NULL;
  zmlx_status st = zmlxi_expr_parse(s, INPUTS, 3, PARAMS, 2, &back);
  if (st != ZMLX_OK && st != ZMLX_ERR_OUT_OF_MEMORY) {
    fprintf(stderr, "printed text does not parse back:\n%s\n%s\n", s, zmlx_last_error());
    abort();
  }
  zmlxi_expr_free(back);
  free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  zmlx_expr *e = NULL;
  if (zmlxi_expr_parse_n((const char *)data, size, INPUTS, 3, PARAMS, 2, &e) != ZMLX_OK) {
    if (!zmlx_last_error()[0]) abort(); /* every failure says why */
    return 0;
  }
  round_trip(e);
  emit_and_eval(e);
  zmlx_expr *vjp = NULL, *jvp = NULL, *second = NULL;
  if (zmlxi_expr_vjp(e, ZMLX_EXPR_WITH_PRIMAL, &vjp) == ZMLX_OK) {
    emit_and_eval(vjp);
    /* Second order on small graphs only, to keep each run fast. */
    if (vjp->n_nodes < 4000 && zmlxi_expr_vjp(vjp, 0, &second) == ZMLX_OK) emit_and_eval(second);
  }
  if (zmlxi_expr_jvp(e, 0, &jvp) == ZMLX_OK) emit_and_eval(jvp);
  zmlxi_expr_free(second);
  zmlxi_expr_free(jvp);
  zmlxi_expr_free(vjp);
  zmlxi_expr_free(e);
  return 0;
}
