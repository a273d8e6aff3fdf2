/*
 * The expression language (src/gen/expr*.c): parsing and precedence, every
 * function of the table (forward vs libm, VJP and JVP vs central finite
 * differences in f64), subgradient conventions, a seeded property test over
 * a few hundred random programs, the simplifier, CSE, emitter determinism,
 * and the rejection of hostile text (injection, comments, deep nesting).
 *
 * Everything is deterministic: fixed seeds, no clocks, no devices.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <locale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen/expr.h"
#include "test_support.h"

static const char *const XYZ[] = {"x", "y", "z"};
static const char *const ALPHA[] = {"alpha"};
static const double PAR_NONE[1] = {0.0};

/* --------------------------------------------------------------- helpers */

static zmlx_expr *parse3(const char *text) {
  zmlx_expr *e = NULL;
  zmlx_status st = zmlxi_expr_parse(text, XYZ, 3, ALPHA, 1, &e);
  if (st != ZMLX_OK) print_error("parse of '%s' failed: %s\n", text, zmlx_last_error());
  assert_int_equal(st, ZMLX_OK);
  assert_non_null(e);
  return e;
}

/* All roots of e at (inputs, params) into out[]. */
static void eval_all(const zmlx_expr *e, const double *in, const double *par, double *out) {
  assert_int_equal(zmlxi_expr_eval(e, in, par, out), ZMLX_OK);
}

static double eval1(const zmlx_expr *e, const double *in, const double *par) {
  double out[1];
  assert_int_equal(e->n_roots, 1);
  eval_all(e, in, par, out);
  return out[0];
}

static char *to_string(const zmlx_expr *e) {
  char *s = NULL;
  assert_int_equal(zmlxi_expr_to_string(e, &s), ZMLX_OK);
  return s;
}

static void assert_text(const char *expr_text, const char *want) {
  zmlx_expr *e = parse3(expr_text);
  char *s = to_string(e);
  if (strcmp(s, want) != 0) print_error("'%s' printed as '%s', want '%s'\n", expr_text, s, want);
  assert_string_equal(s, want);
  free(s);
  zmlxi_expr_free(e);
}

/* Emit with inputs read as in<i>_load(idx), params as param_<i>, roots
 * stored with out<j>_store(idx, %s). Caller frees. */
static char *emit(const zmlx_expr *e) {
  static const char *const in_text[] = {"in0_load(idx)", "in1_load(idx)", "in2_load(idx)",
                                        "in3_load(idx)", "in4_load(idx)", "in5_load(idx)",
                                        "in6_load(idx)", "in7_load(idx)"};
  static const char *const par_text[] = {"param_0", "param_1"};
  static const char *const store[] = {"out0_store(idx, %s)", "out1_store(idx, %s)",
                                      "out2_store(idx, %s)", "out3_store(idx, %s)",
                                      "out4_store(idx, %s)", "out5_store(idx, %s)",
                                      "out6_store(idx, %s)", "out7_store(idx, %s)"};
  assert_true(e->n_inputs <= 8 && e->n_params <= 2 && e->n_roots <= 8);
  zmlx_expr_emit_ctx ctx = {in_text, par_text, store, NULL, NULL};
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlx_status st = zmlxi_expr_emit(e, &ctx, &sb);
  if (st != ZMLX_OK) print_error("emit failed: %s\n", zmlx_last_error());
  assert_int_equal(st, ZMLX_OK);
  char *s = NULL;
  assert_int_equal(zmlxi_sb_finish(&sb, &s), ZMLX_OK);
  return s;
}

static int count_substr(const char *s, const char *sub) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, sub)) != NULL; p += strlen(sub)) n++;
  return n;
}

/* Every identifier of emitted C must come from the dialect, the caller's
 * ctx text, or the temporaries: nothing from the user's text. */
static int allowed_identifier(const char *s, size_t n) {
  static const char *const ok[] = {
      "float", "exp", "exp2", "expm1", "log", "log2", "log1p", "sqrt", "rsqrt", "fabs", "sin",
      "cos", "tan", "tanh", "sinh", "cosh", "asin", "acos", "atan", "atan2", "erf", "erfc",
      "floor", "ceil", "round", "fmin", "fmax", "pow", "ZMLX_INF", "ZMLX_NAN", "idx",
      "param_0", "param_1", NULL};
  for (int i = 0; ok[i]; i++)
    if (strlen(ok[i]) == n && !memcmp(ok[i], s, n)) return 1;
  /* in<k>_load, out<k>_store, t<k> */
  if (n >= 2 && s[0] == 't' && strspn(s + 1, "0123456789") >= n - 1) return 1;
  if (n == 8 && !memcmp(s, "in", 2) && !memcmp(s + 3, "_load", 5)) return 1;
  if (n == 10 && !memcmp(s, "out", 3) && !memcmp(s + 4, "_store", 6)) return 1;
  return 0;
}

static int is_alpha_(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_digit_(char c) { return c >= '0' && c <= '9'; }

static void assert_only_allowed_identifiers(const char *src) {
  for (const char *p = src; *p;) {
    if (is_digit_(*p) || (*p == '.' && is_digit_(p[1]))) { /* a number: 1.5e-07f */
      while (is_digit_(*p) || *p == '.' || *p == 'e' || *p == 'f' ||
             ((*p == '-' || *p == '+') && p[-1] == 'e'))
        p++;
    } else if (is_alpha_(*p)) {
      const char *s = p;
      while (is_alpha_(*p) || is_digit_(*p)) p++;
      if (!allowed_identifier(s, (size_t)(p - s)))
        print_error("unexpected identifier '%.*s' in:\n%s\n", (int)(p - s), s, src);
      assert_true(allowed_identifier(s, (size_t)(p - s)));
    } else {
      /* Only C punctuation of expressions and statements. */
      assert_non_null(strchr(" \n()+-*/<>=!&|?:;,.", *p));
      p++;
    }
  }
}

/* Parse must fail with ZMLX_ERR_PARSE, a "line:col: " prefix, `what` in the
 * message, and a caret line. */
static void expect_error_n(const char *text, size_t len, const char *where, const char *what) {
  zmlx_expr *e = NULL;
  zmlx_status st = zmlxi_expr_parse_n(text, len, XYZ, 3, ALPHA, 1, &e);
  const char *msg = zmlx_last_error();
  if (st != ZMLX_ERR_PARSE || strncmp(msg, where, strlen(where)) != 0 || !strstr(msg, what))
    print_error("text '%.60s': status %s, message:\n%s\nwant '%s' ... '%s'\n", text,
                zmlx_status_string(st), msg, where, what);
  assert_int_equal(st, ZMLX_ERR_PARSE);
  assert_null(e);
  assert_true(strncmp(msg, where, strlen(where)) == 0);
  assert_non_null(strstr(msg, what));
  assert_non_null(strstr(msg, "\n  "));
  assert_non_null(strchr(msg, '^'));
}

static void expect_error(const char *text, const char *where, const char *what) {
  expect_error_n(text, strlen(text), where, what);
}

static char *repeat(const char *a, int n, const char *mid, const char *b, int m) {
  size_t la = strlen(a), lm = strlen(mid), lb = strlen(b);
  char *s = malloc(la * (size_t)n + lm + lb * (size_t)m + 1);
  assert_non_null(s);
  char *p = s;
  for (int i = 0; i < n; i++, p += la) memcpy(p, a, la);
  memcpy(p, mid, lm);
  p += lm;
  for (int i = 0; i < m; i++, p += lb) memcpy(p, b, lb);
  *p = '\0';
  return s;
}

/* Central difference of root `root` of e along direction dir (3 inputs). */
static double central_diff(const zmlx_expr *e, const double *p, const double *dir,
                           const double *par, double h) {
  double a[3], b[3];
  for (int i = 0; i < 3; i++) {
    a[i] = p[i] + h * dir[i];
    b[i] = p[i] - h * dir[i];
  }
  return (eval1(e, a, par) - eval1(e, b, par)) / (2.0 * h);
}

static int close_to(double got, double want, double rel, double abs_tol) {
  return fabs(got - want) <= abs_tol + rel * fabs(want);
}

/* ------------------------------------------------------ parse, precedence */

static void test_precedence(void **state) {
  (void)state;
  const double in[3] = {0.7, -0.3, 2.0}, par[1] = {0.25};
  const double x = in[0], y = in[1], z = in[2], alpha = par[0];
  struct { const char *text; double want; } cases[] = {
      {"-x**2", -(x * x)},
      {"(-x)**2", x * x},
      {"2**3**2", 512.0},
      {"2**-1", 0.5},
      {"-2**2", -4.0},
      {"1 - 2 - 3", -4.0},
      {"8 / 4 / 2", 1.0},
      {"x + y * z", x + y * z},
      {"(x + y) * z", (x + y) * z},
      {"x - -y", x + y},
      {"+x", x},
      {"!x", 0.0},
      {"!0", 1.0},
      {"!x + 1", 1.0},
      {"x < y", 0.0},
      {"x > y", 1.0},
      {"x <= 0.7", 1.0},
      {"x >= 0.8", 0.0},
      {"x == 0.7", 1.0},
      {"x != 0.7", 0.0},
      {"x > y && z > 1", 1.0},
      {"x < y || z < 1", 0.0},
      {"x < y || z > 1 && y < 0", 1.0},
      {"x + 1 > y * 2", 1.0},
      {"x > y ? z : y", z},
      {"x < y ? z : y < 0 ? 10 : 20", 10.0},
      {"x > 0 ? y > 0 ? 1 : 2 : 3", 2.0},
      {"where(x > y, x, y)", x},
      {"1e-6 + .5 + 1. + 2.5e2 + 1E+1", 1e-6 + 0.5 + 1.0 + 250.0 + 10.0},
      {"inf > 1e308", 1.0},
      {"x * alpha", x * alpha},
      {"s = sigmoid(x); x * s * y", x * (1.0 / (1.0 + exp(-x))) * y},
      {"a = x + 1\nb = a * a\n\nb - a", (x + 1) * (x + 1) - (x + 1)},
      {"a = x; a = a * 2; a = a + 1; a", 2 * x + 1},
      {";\n x + y ;\n", x + y},
      {"(x +\n y)\n", x + y},
      {"clamp(x,\n  -1,\n  0.5)", 0.5},
      {"\tx\r\n", x},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    zmlx_expr *e = parse3(cases[i].text);
    double got = eval1(e, in, par);
    if (!close_to(got, cases[i].want, 1e-15, 1e-15))
      print_error("'%s' = %.17g, want %.17g\n", cases[i].text, got, cases[i].want);
    assert_true(close_to(got, cases[i].want, 1e-15, 1e-15));
    zmlxi_expr_free(e);
  }
  /* nan is a literal too. */
  zmlx_expr *e = parse3("nan + x");
  assert_true(isnan(eval1(e, in, par)));
  zmlxi_expr_free(e);
}

static double number(const char *text) {
  const double in[3] = {0, 0, 0};
  zmlx_expr *e = parse3(text);
  double v = eval1(e, in, PAR_NONE);
  zmlxi_expr_free(e);
  return v;
}

/* Numbers are read exactly (correctly rounded) whatever the C locale. */
static void test_numbers(void **state) {
  (void)state;
  assert_true(number("0.1") == 0.1);
  assert_true(number("123.456e-2") == 1.23456);
  assert_true(number("00012.5000") == 12.5);
  assert_true(number(".5") == 0.5 && number("5.") == 5.0 && number("5.E1") == 50.0);
  assert_true(number("0.1000000000000000055511151231257827") == 0.1);
  assert_true(number("1e400") == INFINITY && number("1e-400") == 0.0);
  assert_true(number("1e99999999999999999999") == INFINITY);
  assert_true(number("0e99999999999999999999") == 0.0);
  assert_true(number("0.000001e99999999999999999999") == INFINITY);
  assert_true(number("5e-324") == 0x1p-1074);
  assert_true(number("1.7976931348623157e308") == 1.7976931348623157e308);
  char *digits = repeat("1", 401, "", "", 0);
  expect_error(digits, "1:1: number too long", "");
  free(digits);
  /* A locale with a decimal comma must not change anything. */
  const char *names[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8", "C.UTF-8", NULL};
  for (int i = 0; names[i]; i++) {
    if (!setlocale(LC_NUMERIC, names[i])) continue;
    assert_true(number("1.5") == 1.5);
    assert_true(number("2.5e-1") == 0.25);
    zmlx_expr *e = parse3("x * 0.5 + 1.25");
    char *src = emit(e), *text = to_string(e);
    assert_non_null(strstr(src, "0.5f"));
    assert_string_equal(text, "(x * 0.5) + 1.25");
    free(src);
    free(text);
    zmlxi_expr_free(e);
  }
  setlocale(LC_NUMERIC, "C");
}

static void test_inputs_and_names(void **state) {
  (void)state;
  zmlx_expr *e = NULL;
  const char *bad1[] = {"1x"}, *bad2[] = {"x", "x"}, *bad3[] = {"exp"}, *bad4[] = {"inf"},
             *bad5[] = {""}, *bad6[] = {"a-b"};
  assert_int_equal(zmlxi_expr_parse("1", bad1, 1, NULL, 0, &e), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_parse("1", bad2, 2, NULL, 0, &e), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_parse("1", bad3, 1, NULL, 0, &e), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_parse("1", bad4, 1, NULL, 0, &e), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_parse("1", bad5, 1, NULL, 0, &e), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_parse("1", bad6, 1, NULL, 0, &e), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_parse("1", XYZ, 1, XYZ, 1, &e), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_parse(NULL, XYZ, 1, NULL, 0, &e), ZMLX_ERR_NULL_ARG);
  assert_int_equal(zmlxi_expr_parse("x", XYZ, 1, NULL, 0, NULL), ZMLX_ERR_NULL_ARG);
  assert_null(e);

  /* No inputs at all: a constant program. */
  assert_int_equal(zmlxi_expr_parse("2 * 3", NULL, 0, NULL, 0, &e), ZMLX_OK);
  double v = 0.0;
  assert_int_equal(zmlxi_expr_eval(e, NULL, NULL, &v), ZMLX_OK);
  assert_true(v == 6.0);
  assert_true(zmlxi_expr_root_is_const(e, 0, &v) && v == 6.0);
  zmlxi_expr_free(e);

  /* Queries. */
  e = parse3("x * alpha + 1");
  assert_true(zmlxi_expr_uses_input(e, 0));
  assert_false(zmlxi_expr_uses_input(e, 1));
  assert_true(zmlxi_expr_uses_param(e, 0));
  assert_false(zmlxi_expr_root_is_const(e, 0, NULL));
  zmlxi_expr_free(e);
  zmlxi_expr_free(NULL);
}

/* ------------------------------------------------------------- functions */

typedef double (*ref_fn)(const double *v, double alpha);

static double r_sig(double x) { return 1.0 / (1.0 + exp(-x)); }
static double r_softplus(double x) { return x > 30 ? x + log1p(exp(-x)) : log1p(exp(x)); }

#define REF(name, body) \
  static double name(const double *v, double alpha) { \
    double x = v[0], y = v[1], z = v[2];                \
    (void)x, (void)y, (void)z, (void)alpha;             \
    return body;                                        \
  }

REF(r_exp, exp(x))
REF(r_exp2, exp2(x))
REF(r_expm1, expm1(x))
REF(r_log, log(x))
REF(r_log2, log2(x))
REF(r_log1p, log1p(x))
REF(r_sqrt, sqrt(x))
REF(r_rsqrt, 1.0 / sqrt(x))
REF(r_abs, fabs(x))
REF(r_sign, x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0))
REF(r_sin, sin(x))
REF(r_cos, cos(x))
REF(r_tan, tan(x))
REF(r_tanh, tanh(x))
REF(r_sinh, sinh(x))
REF(r_cosh, cosh(x))
REF(r_asin, asin(x))
REF(r_acos, acos(x))
REF(r_atan, atan(x))
REF(r_atan2, atan2(x, y))
REF(r_erf, erf(x))
REF(r_erfc, erfc(x))
REF(r_floor, floor(x))
REF(r_ceil, ceil(x))
REF(r_round, round(x))
REF(r_min, fmin(x, y))
REF(r_max, fmax(x, y))
REF(r_clamp, fmin(fmax(x, y), z))
REF(r_pow, pow(x, y))
REF(r_where, x != 0 ? y : z)
REF(r_sigmoid, r_sig(x))
REF(r_silu, x * r_sig(x))
REF(r_gelu, 0.5 * x * (1.0 + erf(x / sqrt(2.0))))
REF(r_gelu_tanh, 0.5 * x * (1.0 + tanh(sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x))))
REF(r_softplus1, r_softplus(x))
REF(r_relu, x > 0 ? x : 0.0)
REF(r_leaky01, x > 0 ? x : 0.1 * x)
REF(r_leaky_alpha, x > 0 ? x : alpha * x)
REF(r_elu, x > 0 ? x : expm1(x))
REF(r_elu05, x > 0 ? x : 0.5 * expm1(x))
REF(r_mish, x * tanh(r_softplus(x)))
REF(r_add, x + y)
REF(r_sub, x - y)
REF(r_mul, x * y)
REF(r_div, x / y)
REF(r_neg, -x)
REF(r_not, x == 0 ? 1.0 : 0.0)
REF(r_lt, x < y ? 1.0 : 0.0)
REF(r_and, (x != 0 && y != 0) ? 1.0 : 0.0)
REF(r_or, (x != 0 || y != 0) ? 1.0 : 0.0)
REF(r_ternary, x > 0 ? y : z)
REF(r_where_pos, x > 0 ? y : z)
REF(r_pow_alpha, pow(x, alpha))

typedef struct fn_case {
  const char *text;
  ref_fn ref;
  double pts[4][3]; /* away from kinks and domain edges */
} fn_case;

#define P1(a, b, c, d) {{a, 0.5, 0.5}, {b, 0.5, 0.5}, {c, 0.5, 0.5}, {d, 0.5, 0.5}}

static const fn_case fn_cases[] = {
    {"exp(x)", r_exp, P1(0.3, -1.2, 2.5, -0.01)},
    {"exp2(x)", r_exp2, P1(0.3, -1.2, 2.5, 4.0)},
    {"expm1(x)", r_expm1, P1(1e-3, -1.2, 2.5, -3e-5)},
    {"log(x)", r_log, P1(0.3, 1.7, 5.0, 0.05)},
    {"log2(x)", r_log2, P1(0.3, 1.7, 5.0, 0.05)},
    {"log1p(x)", r_log1p, P1(-0.5, 0.3, 2.0, 1e-4)},
    {"sqrt(x)", r_sqrt, P1(0.2, 1.0, 3.3, 9.0)},
    {"rsqrt(x)", r_rsqrt, P1(0.2, 1.0, 3.3, 9.0)},
    {"abs(x)", r_abs, P1(0.7, -0.7, 1.3, -2.1)},
    {"sign(x)", r_sign, P1(0.7, -0.7, 1.3, -2.1)},
    {"sin(x)", r_sin, P1(0.3, -1.2, 2.5, 4.0)},
    {"cos(x)", r_cos, P1(0.3, -1.2, 2.5, 4.0)},
    {"tan(x)", r_tan, P1(0.3, -1.2, 1.0, 0.1)},
    {"tanh(x)", r_tanh, P1(0.3, -1.2, 2.5, 6.0)},
    {"sinh(x)", r_sinh, P1(0.3, -1.2, 2.5, 4.0)},
    {"cosh(x)", r_cosh, P1(0.3, -1.2, 2.5, 4.0)},
    {"asin(x)", r_asin, P1(-0.9, -0.3, 0.4, 0.8)},
    {"acos(x)", r_acos, P1(-0.9, -0.3, 0.4, 0.8)},
    {"atan(x)", r_atan, P1(0.3, -1.2, 2.5, 40.0)},
    {"atan2(x, y)", r_atan2, {{0.5, 1.2, 0}, {-0.7, 0.4, 0}, {1.1, -0.6, 0}, {-2.0, -1.5, 0}}},
    {"erf(x)", r_erf, P1(0.3, -1.2, 2.5, 0.01)},
    {"erfc(x)", r_erfc, P1(0.3, -1.2, 2.5, 0.01)},
    {"floor(x)", r_floor, P1(0.3, 1.7, -2.4, 3.2)},
    {"ceil(x)", r_ceil, P1(0.3, 1.7, -2.4, 3.2)},
    {"round(x)", r_round, P1(0.3, 1.2, -2.7, 4.4)},
    {"min(x, y)", r_min, {{0.3, 0.9, 0}, {1.2, -0.4, 0}, {-2.0, -1.0, 0}, {5.0, 4.0, 0}}},
    {"max(x, y)", r_max, {{0.3, 0.9, 0}, {1.2, -0.4, 0}, {-2.0, -1.0, 0}, {5.0, 4.0, 0}}},
    {"clamp(x, y, z)", r_clamp,
     {{0.3, -1.0, 1.0}, {-1.5, -1.0, 1.0}, {1.5, -1.0, 1.0}, {0.2, 0.1, 0.25}}},
    {"pow(x, y)", r_pow, {{0.3, 1.5, 0}, {2.0, -0.7, 0}, {1.7, 3.0, 0}, {4.0, 0.5, 0}}},
    {"x ** y", r_pow, {{0.3, 1.5, 0}, {2.0, -0.7, 0}, {1.7, 3.0, 0}, {4.0, 0.5, 0}}},
    {"x ** alpha", r_pow_alpha, P1(0.3, 2.0, 1.7, 4.0)},
    {"where(x, y, z)", r_where, {{1.0, 0.3, -2.0}, {-1.0, 0.3, -2.0}, {-0.5, 1.2, 0.7}, {2, 1, 2}}},
    {"where(x > 0, y, z)", r_where_pos,
     {{1.0, 0.3, -2.0}, {-1.0, 0.3, -2.0}, {-0.5, 1.2, 0.7}, {2, 1, 2}}},
    {"sigmoid(x)", r_sigmoid, P1(0.3, -1.2, 2.5, -8.0)},
    {"silu(x)", r_silu, P1(0.3, -1.2, 2.5, -8.0)},
    {"gelu(x)", r_gelu, P1(0.3, -1.2, 2.5, -3.0)},
    {"gelu_tanh(x)", r_gelu_tanh, P1(0.3, -1.2, 2.5, -3.0)},
    {"softplus(x)", r_softplus1, P1(0.3, -1.2, 25.0, -30.0)},
    {"relu(x)", r_relu, P1(0.3, -1.2, 2.5, -0.01)},
    {"leaky_relu(x, 0.1)", r_leaky01, P1(0.3, -1.2, 2.5, -0.01)},
    {"leaky_relu(x, alpha)", r_leaky_alpha, P1(0.3, -1.2, 2.5, -0.01)},
    {"elu(x)", r_elu, P1(0.3, -1.2, 2.5, -0.01)},
    {"elu(x, 0.5)", r_elu05, P1(0.3, -1.2, 2.5, -0.01)},
    {"mish(x)", r_mish, P1(0.3, -1.2, 2.5, -5.0)},
    {"x + y", r_add, {{0.3, 0.9, 0}, {1.2, -0.4, 0}, {-2, -1, 0}, {5, 4, 0}}},
    {"x - y", r_sub, {{0.3, 0.9, 0}, {1.2, -0.4, 0}, {-2, -1, 0}, {5, 4, 0}}},
    {"x * y", r_mul, {{0.3, 0.9, 0}, {1.2, -0.4, 0}, {-2, -1, 0}, {5, 4, 0}}},
    {"x / y", r_div, {{0.3, 0.9, 0}, {1.2, -0.4, 0}, {-2, -1, 0}, {5, 4, 0}}},
    {"-x", r_neg, P1(0.3, -1.2, 2.5, 0.0)},
    {"!x", r_not, P1(0.3, -1.2, 2.5, 0.0)},
    {"x < y", r_lt, {{0.3, 0.9, 0}, {1.2, -0.4, 0}, {-2, -1, 0}, {5, 4, 0}}},
    {"x && y", r_and, {{0.3, 0.9, 0}, {0, -0.4, 0}, {-2, 0, 0}, {0, 0, 0}}},
    {"x || y", r_or, {{0.3, 0.9, 0}, {0, -0.4, 0}, {-2, 0, 0}, {0, 0, 0}}},
    {"x > 0 ? y : z", r_ternary,
     {{1.0, 0.3, -2.0}, {-1.0, 0.3, -2.0}, {-0.5, 1.2, 0.7}, {2, 1, 2}}},
};

#define N_FN_CASES (sizeof fn_cases / sizeof fn_cases[0])

static const double PAR[1] = {0.15};

static void check_forward(const fn_case *c, const zmlx_expr *e, const double *p) {
  double got = eval1(e, p, PAR), want = c->ref(p, PAR[0]);
  if (!close_to(got, want, 1e-13, 1e-300))
    print_error("%s at (%g, %g, %g): %.17g, libm %.17g\n", c->text, p[0], p[1], p[2], got, want);
  assert_true(close_to(got, want, 1e-13, 1e-300));
}

/* VJP with cotangent 1 against central differences in each input. */
static void check_vjp(const fn_case *c, const zmlx_expr *e, const zmlx_expr *vjp,
                      const double *p) {
  double in[4] = {p[0], p[1], p[2], 1.0}, grad[3];
  eval_all(vjp, in, PAR, grad);
  for (int i = 0; i < 3; i++) {
    double dir[3] = {0, 0, 0};
    dir[i] = 1.0;
    double fd = central_diff(e, p, dir, PAR, 1e-6 * fmax(1.0, fabs(p[i])));
    if (!close_to(grad[i], fd, 1e-6, 1e-7))
      print_error("%s: d/d%s at (%g, %g, %g) = %.12g, finite difference %.12g\n", c->text,
                  XYZ[i], p[0], p[1], p[2], grad[i], fd);
    assert_true(close_to(grad[i], fd, 1e-6, 1e-7));
  }
}

static void check_jvp(const fn_case *c, const zmlx_expr *e, const zmlx_expr *jvp,
                      const double *p) {
  const double dir[3] = {0.3, -0.7, 0.5};
  double in[6] = {p[0], p[1], p[2], dir[0], dir[1], dir[2]}, out[2];
  eval_all(jvp, in, PAR, out);
  double fd = central_diff(e, p, dir, PAR, 1e-6);
  if (!close_to(out[1], fd, 1e-6, 1e-7))
    print_error("%s: jvp at (%g, %g, %g) = %.12g, finite difference %.12g\n", c->text, p[0],
                p[1], p[2], out[1], fd);
  assert_true(close_to(out[1], fd, 1e-6, 1e-7));
  assert_true(out[0] == eval1(e, p, PAR) || (isnan(out[0]) && isnan(eval1(e, p, PAR))));
}

static void test_every_function(void **state) {
  (void)state;
  for (size_t k = 0; k < N_FN_CASES; k++) {
    const fn_case *c = &fn_cases[k];
    zmlx_expr *e = parse3(c->text), *vjp = NULL, *jvp = NULL;
    assert_int_equal(zmlxi_expr_vjp(e, 0, &vjp), ZMLX_OK);
    assert_int_equal(zmlxi_expr_jvp(e, ZMLX_EXPR_WITH_PRIMAL, &jvp), ZMLX_OK);
    for (int i = 0; i < 4; i++) {
      check_forward(c, e, c->pts[i]);
      check_vjp(c, e, vjp, c->pts[i]);
      check_jvp(c, e, jvp, c->pts[i]);
    }
    /* Forward, gradient and tangent kernels use only dialect names. */
    char *s1 = emit(e), *s2 = emit(vjp), *s3 = emit(jvp);
    assert_only_allowed_identifiers(s1);
    assert_only_allowed_identifiers(s2);
    assert_only_allowed_identifiers(s3);
    free(s1);
    free(s2);
    free(s3);
    zmlxi_expr_free(e);
    zmlxi_expr_free(vjp);
    zmlxi_expr_free(jvp);
  }
}

/* The table and the cases above agree: no function goes untested. */
static void test_function_table_covered(void **state) {
  (void)state;
  int n = zmlxi_expr_function_count();
  assert_int_equal(n, 39);
  assert_null(zmlxi_expr_function_at(-1));
  assert_null(zmlxi_expr_function_at(n));
  for (int i = 0; i < n; i++) {
    const zmlx_expr_function *f = zmlxi_expr_function_at(i);
    assert_true(f->min_args >= 1 && f->min_args <= f->max_args && f->max_args <= 3);
    assert_true(f->doc && f->doc[0]);
    char call[64];
    snprintf(call, sizeof call, "%s(", f->name);
    int found = 0;
    for (size_t k = 0; k < N_FN_CASES && !found; k++) {
      const char *t = fn_cases[k].text;
      found = strncmp(t, call, strlen(call)) == 0;
    }
    if (!found) print_error("function '%s' has no test case\n", f->name);
    assert_true(found);
    for (int j = 0; j < i; j++) assert_string_not_equal(zmlxi_expr_function_at(j)->name, f->name);
  }
}

/* Gradient of root 0 w.r.t. input i at p (3 inputs). */
static double grad_at(const char *text, int i, double x, double y, double z) {
  zmlx_expr *e = parse3(text), *vjp = NULL;
  assert_int_equal(zmlxi_expr_vjp(e, 0, &vjp), ZMLX_OK);
  double in[4] = {x, y, z, 1.0}, g[3];
  const double par[1] = {0.1};
  eval_all(vjp, in, par, g);
  zmlxi_expr_free(e);
  zmlxi_expr_free(vjp);
  return g[i];
}

static void test_subgradients(void **state) {
  (void)state;
  assert_true(grad_at("relu(x)", 0, 0.0, 0, 0) == 0.0);
  assert_true(grad_at("abs(x)", 0, 0.0, 0, 0) == 0.0);
  assert_true(grad_at("sign(x)", 0, 0.0, 0, 0) == 0.0);
  assert_true(grad_at("floor(x) + ceil(x) + round(x)", 0, 0.5, 0, 0) == 0.0);
  assert_true(grad_at("leaky_relu(x, alpha)", 0, 0.0, 0, 0) == 0.1);
  assert_true(grad_at("leaky_relu(x, 0.2)", 0, 0.0, 0, 0) == 0.2);
  assert_true(grad_at("elu(x)", 0, 0.0, 0, 0) == 1.0);
  assert_true(grad_at("elu(x, 0.5)", 0, 0.0, 0, 0) == 0.5);
  /* Ties go to the first argument. */
  assert_true(grad_at("min(x, y)", 0, 1.0, 1.0, 0) == 1.0);
  assert_true(grad_at("min(x, y)", 1, 1.0, 1.0, 0) == 0.0);
  assert_true(grad_at("max(x, y)", 0, 1.0, 1.0, 0) == 1.0);
  assert_true(grad_at("max(x, y)", 1, 1.0, 1.0, 0) == 0.0);
  /* clamp(x, lo, hi): x keeps the gradient on both bounds. */
  assert_true(grad_at("clamp(x, y, z)", 0, -1.0, -1.0, 1.0) == 1.0);
  assert_true(grad_at("clamp(x, y, z)", 0, 1.0, -1.0, 1.0) == 1.0);
  assert_true(grad_at("clamp(x, y, z)", 1, -2.0, -1.0, 1.0) == 1.0);
  assert_true(grad_at("clamp(x, y, z)", 2, 2.0, -1.0, 1.0) == 1.0);
  /* Conditions get no gradient. */
  assert_true(grad_at("where(x > y, z, 2 * z)", 0, 1.0, 0.0, 3.0) == 0.0);
  assert_true(grad_at("where(x > y, z, 2 * z)", 2, 1.0, 0.0, 3.0) == 1.0);
  assert_true(grad_at("(x < y) * 5 + !x", 0, 1.0, 2.0, 0) == 0.0);
  /* A masked branch contributes exactly 0, even with an infinite
   * derivative there: no NaN through where(). */
  assert_true(grad_at("where(x > 0, log(x), 0)", 0, 0.0, 0, 0) == 0.0);
  assert_true(grad_at("where(x > 0, sqrt(x), 0)", 0, 0.0, 0, 0) == 0.0);
  assert_true(grad_at("x > 0 ? x * log(x) : 0", 0, -1.0, 0, 0) == 0.0);
  /* pow with a constant exponent: no log(x) term, so negative bases work. */
  assert_true(grad_at("pow(x, 3)", 0, -2.0, 0, 0) == 12.0);
  assert_true(grad_at("x ** 2", 0, -3.0, 0, 0) == -6.0);
  /* Parameters are constants to differentiation. */
  assert_true(grad_at("x * alpha", 0, 2.0, 0, 0) == 0.1);
}

/* ----------------------------------------------------- property testing */

typedef struct rng {
  uint64_t s;
} rng;

static uint64_t rng_next(rng *r) { /* splitmix64 */
  uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static int rng_int(rng *r, int n) { return (int)(rng_next(r) % (uint64_t)n); }

static double rng_uniform(rng *r, double lo, double hi) {
  return lo + (hi - lo) * (double)(rng_next(r) >> 11) * 0x1p-53;
}

static void gen(rng *r, zmlx_sb *sb, int depth, int n_locals);

static void gen_leaf(rng *r, zmlx_sb *sb, int n_locals) {
  static const char *const leaves[] = {"x", "y", "z", "alpha", "0.5", "2", "1.5", ".25", "3",
                                       "1e-1", "x", "y", "z"};
  int n = (int)(sizeof leaves / sizeof leaves[0]);
  int k = rng_int(r, n + n_locals);
  if (k < n)
    zmlxi_sb_append(sb, leaves[k]);
  else
    zmlxi_sb_printf(sb, "a%d", k - n);
}

/* Template with A, B, C, D standing for random subexpressions. */
static void gen_template(rng *r, zmlx_sb *sb, const char *t, int depth, int n_locals) {
  for (; *t; t++) {
    if (*t >= 'A' && *t <= 'D') {
      gen(r, sb, depth - 1, n_locals);
    } else if (*t == ' ' && rng_int(r, 8) == 0) {
      zmlxi_sb_append(sb, "  ");
    } else {
      zmlxi_sb_appendn(sb, t, 1);
    }
  }
}

static void gen(rng *r, zmlx_sb *sb, int depth, int n_locals) {
  static const char *const forms[] = {
      "(A + B)", "(A - B)", "(A * B)", "(A / B)", "A / (2 + cos(B))", "-(A)", "-A * B",
      "exp(0.5 * tanh(A))", "exp(A)", "exp2(A)", "expm1(A)", "sin(A)", "cos(A)", "tanh(A)",
      "atan(A)", "erf(A)", "erfc(A)", "sinh(A)", "cosh(A)", "sigmoid(A)", "silu(A)",
      "gelu(A)", "gelu_tanh(A)", "softplus(A)", "mish(A)", "log(1.5 + tanh(A))",
      "log2(1.5 + tanh(A))", "sqrt(1.5 + tanh(A))", "rsqrt(1.5 + sin(A))",
      "log1p(0.5 * tanh(A))", "asin(0.9 * tanh(A))", "acos(0.9 * tanh(A))", "tan(tanh(A))",
      "pow(1.2 + sigmoid(A), B)", "(1 + sigmoid(A)) ** B", "A ** 2", "A ** 3", "(A)**-1",
      "abs(A)", "relu(A)", "sign(A) * B", "floor(A) + B", "ceil(A) * B", "round(A) - B",
      "leaky_relu(A, alpha)", "elu(A)", "elu(A, 0.5)", "min(A, B)", "max(A, B)",
      "clamp(A, -0.5, 0.8)", "atan2(A, 2 + sin(B))", "where(A > B, C, D)",
      "(A <= B ? C : D)", "where(A > 0 && B < 1, C, D)", "where(!(A < B) || C > 2, C, D)",
      "(A < B) + C", "(A ==\n B) * C + D", "(A != B) + C"};
  if (depth <= 0 || rng_int(r, 5) == 0) {
    gen_leaf(r, sb, n_locals);
    return;
  }
  int n = (int)(sizeof forms / sizeof forms[0]);
  gen_template(r, sb, forms[rng_int(r, n)], depth, n_locals);
}

/* A program: up to two assignments, then the result expression. */
static char *gen_program(rng *r) {
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  int n_locals = rng_int(r, 3);
  for (int i = 0; i < n_locals; i++) {
    zmlxi_sb_printf(&sb, "a%d = ", i);
    gen(r, &sb, 3, i);
    zmlxi_sb_append(&sb, rng_int(r, 2) ? ";" : "\n");
  }
  gen(r, &sb, 5, n_locals);
  char *s = NULL;
  assert_int_equal(zmlxi_sb_finish(&sb, &s), ZMLX_OK);
  return s;
}

typedef struct prop_stats {
  int points, smooth_checks, kink_skips, jvp_checks;
} prop_stats;

/* Two central differences that agree mean "smooth here"; they disagree
 * near kinks and jumps, which is when we skip. Returns 1 and the estimate
 * when smooth. */
static int smooth_derivative(const zmlx_expr *e, const double *p, const double *dir,
                             const double *par, double *out) {
  double d1 = central_diff(e, p, dir, par, 1e-4);
  double d2 = central_diff(e, p, dir, par, 1e-5);
  if (!isfinite(d1) || !isfinite(d2) || !close_to(d1, d2, 1e-5, 1e-6)) return 0;
  *out = d2;
  return 1;
}

static void check_point(const char *text, const zmlx_expr *e, const zmlx_expr *vjp,
                        const zmlx_expr *jvp, const double *p, const double *par,
                        const double *dir, prop_stats *st) {
  double f = eval1(e, p, par);
  if (!isfinite(f) || fabs(f) > 1e6) return;
  st->points++;
  double in[4] = {p[0], p[1], p[2], 1.0}, grad[3];
  eval_all(vjp, in, par, grad);
  for (int i = 0; i < 3; i++) {
    double unit[3] = {0, 0, 0}, fd;
    unit[i] = 1.0;
    if (!smooth_derivative(e, p, unit, par, &fd)) {
      st->kink_skips++;
      continue;
    }
    if (!close_to(grad[i], fd, 2e-5, 2e-5))
      print_error("program: %s\n d/d%s at (%.17g, %.17g, %.17g) alpha %.17g: vjp %.12g, fd %.12g\n",
                  text, XYZ[i], p[0], p[1], p[2], par[0], grad[i], fd);
    assert_true(close_to(grad[i], fd, 2e-5, 2e-5));
    st->smooth_checks++;
  }
  double tin[6] = {p[0], p[1], p[2], dir[0], dir[1], dir[2]}, tan_out[1], fd;
  eval_all(jvp, tin, par, tan_out);
  if (smooth_derivative(e, p, dir, par, &fd)) {
    if (!close_to(tan_out[0], fd, 2e-5, 2e-5))
      print_error("program: %s\n jvp at (%.17g, %.17g, %.17g): %.12g, fd %.12g\n", text, p[0],
                  p[1], p[2], tan_out[0], fd);
    assert_true(close_to(tan_out[0], fd, 2e-5, 2e-5));
    st->jvp_checks++;
  }
  /* Forward and reverse mode agree with each other wherever both are finite. */
  double dot = 0.0, mag = 0.0;
  for (int i = 0; i < 3; i++) dot += grad[i] * dir[i], mag += fabs(grad[i] * dir[i]);
  if (isfinite(dot) && isfinite(tan_out[0]))
    assert_true(close_to(tan_out[0], dot, 0.0, 1e-12 * (1.0 + mag)));
}

/* Printing and re-parsing gives the same function. */
static void check_round_trip(const zmlx_expr *e, const double *p, const double *par) {
  char *s = to_string(e);
  zmlx_expr *back = NULL;
  zmlx_status st = zmlxi_expr_parse(s, XYZ, 3, ALPHA, 1, &back);
  if (st != ZMLX_OK) print_error("re-parse of '%s': %s\n", s, zmlx_last_error());
  assert_int_equal(st, ZMLX_OK);
  double a = eval1(e, p, par), b = eval1(back, p, par);
  assert_true(a == b || (isnan(a) && isnan(b)));
  free(s);
  zmlxi_expr_free(back);
}

static void check_emit_deterministic(const char *text, const zmlx_expr *vjp) {
  zmlx_expr *again = parse3(text), *vjp2 = NULL;
  assert_int_equal(zmlxi_expr_vjp(again, 0, &vjp2), ZMLX_OK);
  char *s1 = emit(vjp), *s2 = emit(vjp2), *s3 = emit(again);
  assert_string_equal(s1, s2);
  assert_only_allowed_identifiers(s1);
  assert_only_allowed_identifiers(s3);
  free(s1);
  free(s2);
  free(s3);
  zmlxi_expr_free(again);
  zmlxi_expr_free(vjp2);
}

static void test_random_programs(void **state) {
  (void)state;
  rng r = {20240611};
  prop_stats st = {0, 0, 0, 0};
  const int n_programs = 400;
  for (int t = 0; t < n_programs; t++) {
    char *text = gen_program(&r);
    zmlx_expr *e = parse3(text), *vjp = NULL, *jvp = NULL;
    assert_int_equal(zmlxi_expr_vjp(e, 0, &vjp), ZMLX_OK);
    assert_int_equal(zmlxi_expr_jvp(e, 0, &jvp), ZMLX_OK);
    for (int k = 0; k < 4; k++) {
      double p[3], par[1] = {rng_uniform(&r, 0.05, 0.3)}, dir[3];
      for (int i = 0; i < 3; i++) {
        p[i] = rng_uniform(&r, -2.0, 2.0);
        dir[i] = rng_uniform(&r, -1.0, 1.0);
      }
      check_point(text, e, vjp, jvp, p, par, dir, &st);
      if (k == 0) check_round_trip(e, p, par);
    }
    if (t % 8 == 0) check_emit_deterministic(text, vjp);
    zmlxi_expr_free(e);
    zmlxi_expr_free(vjp);
    zmlxi_expr_free(jvp);
    free(text);
  }
  print_message("random programs: %d points, %d gradient checks, %d kink skips, %d jvp checks\n",
                st.points, st.smooth_checks, st.kink_skips, st.jvp_checks);
  /* The generator must mostly produce checkable programs, or the test
   * proves nothing. */
  assert_true(st.points > n_programs * 4 * 6 / 10);
  assert_true(st.smooth_checks > st.points * 3 * 8 / 10);
  assert_true(st.jvp_checks > st.points * 8 / 10);
}

/* ------------------------------------------------ simplifier, sharing, emit */

static void test_simplifier(void **state) {
  (void)state;
  assert_text("x * 1", "x");
  assert_text("1 * x", "x");
  assert_text("x * 0", "0");
  assert_text("0 * x", "0");
  assert_text("x + 0", "x");
  assert_text("0 + x", "x");
  assert_text("x - 0", "x");
  assert_text("0 - x", "-x");
  assert_text("x / 1", "x");
  assert_text("--x", "x");
  assert_text("- - - x", "-x");
  assert_text("x ** 1", "x");
  assert_text("x ** 0", "1");
  assert_text("x ** 2", "x * x");
  assert_text("x - x", "0");
  assert_text("x + -y", "x - y");
  assert_text("x - -y", "x + y");
  assert_text("2 * 3 + 1", "7");
  assert_text("exp(0) + log(1) * x", "1");
  assert_text("where(1, x, y)", "x");
  assert_text("0 ? x : y", "y");
  assert_text("where(x > 0, y, y)", "y");
  assert_text("min(x, x) + max(y, y)", "x + y");
  assert_text("x * 1 + 0 * y + z / 1", "x + z");
  assert_text("x*y + y*x", "t0 = x * y; t0 + t0");
  assert_text("sin(x) * cos(x) + sin(x)", "t0 = sin(x); t0 + (t0 * cos(x))");
  assert_text("1 / 0", "inf");
  assert_text("-1 / 0", "-inf");
  assert_text("0 / 0", "nan");
  assert_text("-2.5 * x", "(-2.5) * x");
}

/* Constant folding against values written by hand (IEEE 754 and the
 * language's documented rules), not against the interpreter: the parser
 * folds before the interpreter and the kernels ever see the expression, so
 * a wrong fold would agree with both. x = 2, y = 3 stand for the branches. */
static int same_value(double got, double want) {
  if (isnan(want)) return isnan(got);
  return got == want && signbit(got) == signbit(want);
}

static void test_folding_edge_values(void **state) {
  (void)state;
  const double in[3] = {2.0, 3.0, 5.0}, par[1] = {0.0};
  struct {
    const char *text;
    double want;
  } cases[] = {
      {"where(-1, x, y)", 2.0},         /* c != 0 takes a */
      {"where(0.5, x, y)", 2.0},
      {"where(-0.0, x, y)", 3.0},       /* -0 == 0 */
      {"where(0 / 0, x, y)", 2.0},      /* NaN != 0 */
      {"(0 / 0) ? x : y", 2.0},
      {"min(0 / 0, 1)", 1.0},           /* a NaN argument loses */
      {"min(1, 0 / 0)", 1.0},
      {"max(0 / 0, -1)", -1.0},
      {"max(-1, 0 / 0)", -1.0},
      {"min(1 / 0, 7)", 7.0},
      {"max(-1 / 0, 7)", 7.0},
      {"pow(0, -1)", INFINITY},
      {"pow(-0.0, -1)", -INFINITY},
      {"pow(0 / 0, 0)", 1.0},
      {"pow(1, 0 / 0)", 1.0},
      {"pow(-8, 1 / 3)", NAN},
      {"pow(-2, 3)", -8.0},
      {"pow(-2, 2)", 4.0},
      {"-0.0 + 0", 0.0},                /* round to nearest: +0 */
      {"-0.0 * 1", -0.0},
      {"0 * -1", -0.0},
      {"1 / -0.0", -INFINITY},
      {"-(0 / 0) == -(0 / 0)", 0.0},    /* NaN compares unequal */
      {"(0 / 0) != (0 / 0)", 1.0},
      {"(1 / 0) - (1 / 0)", NAN},
      {"(1 / 0) * 0", NAN},
      {"exp(1000)", INFINITY},
      {"log(0)", -INFINITY},
      {"log(-1)", NAN},
      {"sqrt(-0.0)", -0.0},
      {"abs(-0.0)", 0.0},
      {"relu(-0.0)", 0.0},
      {"clamp(0 / 0, 0, 1)", 0.0},      /* min(max(NaN, 0), 1): NaN loses to 0 */
      {"tanh(1 / 0)", 1.0},
      {"sigmoid(-1 / 0)", 0.0},
      {"sigmoid(1 / 0)", 1.0},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    zmlx_expr *e = parse3(cases[i].text);
    double got = eval1(e, in, par);
    if (!same_value(got, cases[i].want))
      fail_msg("'%s' folds to %.17g, want %.17g", cases[i].text, got, cases[i].want);
    zmlxi_expr_free(e);
  }
}

/* A user whose inputs look like temporaries still gets a parseable print. */
static void test_to_string_names(void **state) {
  (void)state;
  const char *ins[] = {"t0", "t1"};
  zmlx_expr *e = NULL, *back = NULL;
  assert_int_equal(zmlxi_expr_parse("exp(t0) * t1 + exp(t0)", ins, 2, NULL, 0, &e), ZMLX_OK);
  char *s = to_string(e);
  assert_string_equal(s, "tt0 = exp(t0); tt0 + (tt0 * t1)");
  assert_int_equal(zmlxi_expr_parse(s, ins, 2, NULL, 0, &back), ZMLX_OK);
  free(s);
  zmlxi_expr_free(back);
  zmlxi_expr_free(e);
}

static void test_cse_in_emitted_source(void **state) {
  (void)state;
  zmlx_expr *e = parse3("sigmoid(x)*x + sigmoid(x)");
  char *s = emit(e);
  assert_int_equal(count_substr(s, "exp("), 1);
  assert_int_equal(count_substr(s, "in0_load(idx)"), 1);
  free(s);
  /* x, sigmoid, *, + */
  assert_int_equal(zmlxi_expr_live_count(e), 4);
  zmlxi_expr_free(e);

  /* Derivatives reuse the forward value: one exp for sigmoid and its
   * derivative, one tanh for tanh and 1 - t*t. */
  const struct { const char *text, *fn; } reuse[] = {
      {"sigmoid(x)", "exp("}, {"tanh(x)", "tanh("}, {"exp(x) * y", "exp("},
      {"silu(x)", "exp("},    {"mish(x)", "tanh("}, {"gelu_tanh(x)", "tanh("}};
  for (size_t i = 0; i < sizeof reuse / sizeof reuse[0]; i++) {
    zmlx_expr *f = parse3(reuse[i].text), *vjp = NULL;
    assert_int_equal(zmlxi_expr_vjp(f, ZMLX_EXPR_WITH_PRIMAL, &vjp), ZMLX_OK);
    char *src = emit(vjp);
    if (count_substr(src, reuse[i].fn) != 1)
      print_error("vjp of %s:\n%s", reuse[i].text, src);
    assert_int_equal(count_substr(src, reuse[i].fn), 1);
    free(src);
    zmlxi_expr_free(f);
    zmlxi_expr_free(vjp);
  }
}

static void expect_vjp_text(const char *text, const char *want) {
  zmlx_expr *e = NULL, *vjp = NULL;
  assert_int_equal(zmlxi_expr_parse(text, XYZ, 1, NULL, 0, &e), ZMLX_OK);
  assert_int_equal(zmlxi_expr_vjp(e, 0, &vjp), ZMLX_OK);
  char *s = to_string(vjp);
  if (strcmp(s, want)) print_error("vjp of %s: '%s', want '%s'\n", text, s, want);
  assert_string_equal(s, want);
  free(s);
  zmlxi_expr_free(e);
  zmlxi_expr_free(vjp);
}

/* The stable derivative forms named in the design. */
static void test_stable_forms(void **state) {
  (void)state;
  expect_vjp_text("softplus(x)", "g * sigmoid(x)");
  expect_vjp_text("log1p(x)", "g / (x + 1)");
  expect_vjp_text("expm1(x)", "g * exp(x)");
  expect_vjp_text("sigmoid(x)", "t0 = sigmoid(x); g * (t0 * (1 - t0))");
  expect_vjp_text("tanh(x)", "t0 = tanh(x); g * (1 - (t0 * t0))");
  expect_vjp_text("relu(x)", "where(x > 0, g, 0)");
  expect_vjp_text("abs(x)", "g * sign(x)");
  expect_vjp_text("floor(x)", "0");
}

static void test_emit_format(void **state) {
  (void)state;
  struct { const char *text, *want; } cases[] = {
      {"x * 2.5 + 1e-6", "  float t0 = in0_load(idx);\n"
                         "  out0_store(idx, ((t0 * 2.5f) + 9.99999997e-07f));\n"},
      {"3", "  out0_store(idx, 3.0f);\n"},
      {"-x", "  float t0 = in0_load(idx);\n  out0_store(idx, (-t0));\n"},
      {"x - 1e300", "  float t0 = in0_load(idx);\n  out0_store(idx, (t0 - ZMLX_INF));\n"},
      {"x * -inf + nan", "  float t0 = in0_load(idx);\n"
                         "  out0_store(idx, ((t0 * (-ZMLX_INF)) + ZMLX_NAN));\n"},
      {"x * 1e-50", "  float t0 = in0_load(idx);\n  out0_store(idx, (t0 * 0.0f));\n"},
      {"x * -0.5", "  float t0 = in0_load(idx);\n  out0_store(idx, (t0 * (-0.5f)));\n"},
      {"x * 3.4028235e38", "  float t0 = in0_load(idx);\n"
                           "  out0_store(idx, (t0 * 3.40282347e+38f));\n"},
      {"x * alpha", "  float t0 = in0_load(idx);\n  float t1 = param_0;\n"
                    "  out0_store(idx, (t0 * t1));\n"},
      {"where(x > y, x, 0)", "  float t0 = in0_load(idx);\n  float t1 = in1_load(idx);\n"
                             "  out0_store(idx, (t0 > t1 ? t0 : 0.0f));\n"},
      {"softplus(x + y)", "  float t0 = in0_load(idx);\n  float t1 = in1_load(idx);\n"
                          "  float t2 = t0 + t1;\n"
                          "  out0_store(idx, (fmax(t2, 0.0f) + log1p(exp(-fabs(t2)))));\n"},
      {"x && !y", "  float t0 = in0_load(idx);\n  float t1 = in1_load(idx);\n"
                  "  out0_store(idx, (t0 != 0.0f && (t1 == 0.0f ? 1.0f : 0.0f) != 0.0f ? "
                  "1.0f : 0.0f));\n"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    zmlx_expr *e = parse3(cases[i].text);
    char *s = emit(e);
    if (strcmp(s, cases[i].want)) print_error("%s emitted:\n%s", cases[i].text, s);
    assert_string_equal(s, cases[i].want);
    free(s);
    zmlxi_expr_free(e);
  }
}

static void test_emit_ctx(void **state) {
  (void)state;
  zmlx_expr *e = parse3("x * y * alpha");
  const char *in_text[] = {"A[i]", "B[i]", NULL}, *par_text[] = {"p.alpha"};
  const char *store[] = {"C[i] = %s; D[i] = %s"};
  zmlx_expr_emit_ctx ctx = {in_text, par_text, store, "v_", "\t"};
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  assert_int_equal(zmlxi_expr_emit(e, &ctx, &sb), ZMLX_OK);
  /* A store that uses its value twice gets a temporary. */
  assert_string_equal(sb.data, "\tfloat v_0 = A[i];\n\tfloat v_1 = B[i];\n\tfloat v_2 = p.alpha;\n"
                               "\tfloat v_3 = (v_0 * v_1) * v_2;\n\tC[i] = v_3; D[i] = v_3;\n");
  zmlxi_sb_free(&sb);

  /* Missing text for a used input or parameter; a store without %s. */
  zmlxi_sb_init(&sb);
  const char *missing[] = {"A[i]", NULL, NULL};
  zmlx_expr_emit_ctx bad = {missing, par_text, store, NULL, NULL};
  assert_int_equal(zmlxi_expr_emit(e, &bad, &sb), ZMLX_ERR_NULL_ARG);
  assert_non_null(strstr(zmlx_last_error(), "'y'"));
  bad = (zmlx_expr_emit_ctx){in_text, NULL, store, NULL, NULL};
  assert_int_equal(zmlxi_expr_emit(e, &bad, &sb), ZMLX_ERR_NULL_ARG);
  const char *no_value[] = {"C[i] = 0"};
  bad = (zmlx_expr_emit_ctx){in_text, par_text, no_value, NULL, NULL};
  assert_int_equal(zmlxi_expr_emit(e, &bad, &sb), ZMLX_ERR_INVALID_ARG);
  assert_int_equal(zmlxi_expr_emit(e, NULL, &sb), ZMLX_ERR_NULL_ARG);
  zmlxi_sb_free(&sb);
  zmlxi_expr_free(e);
}

static void test_emit_deterministic(void **state) {
  (void)state;
  const char *text = "s = sigmoid(x); t = tanh(y * s); where(s > 0.5, t * s, gelu(z)) + mish(t)";
  char *first = NULL;
  for (int round = 0; round < 3; round++) {
    zmlx_expr *e = parse3(text), *vjp = NULL, *jvp = NULL;
    assert_int_equal(zmlxi_expr_vjp(e, ZMLX_EXPR_WITH_PRIMAL, &vjp), ZMLX_OK);
    assert_int_equal(zmlxi_expr_jvp(e, 0, &jvp), ZMLX_OK);
    zmlx_sb all;
    zmlxi_sb_init(&all);
    char *a = emit(e), *b = emit(vjp), *c = emit(jvp), *b2 = emit(vjp);
    assert_string_equal(b, b2);
    zmlxi_sb_printf(&all, "%s--\n%s--\n%s", a, b, c);
    if (!first)
      first = zmlxi_strdup(all.data);
    else
      assert_string_equal(first, all.data);
    free(a);
    free(b);
    free(b2);
    free(c);
    zmlxi_sb_free(&all);
    zmlxi_expr_free(e);
    zmlxi_expr_free(vjp);
    zmlxi_expr_free(jvp);
  }
  free(first);
}

/* ------------------------------------------------------- vjp / jvp shape */

static void test_derivative_graphs(void **state) {
  (void)state;
  zmlx_expr *e = parse3("x * x * y + alpha"), *vjp = NULL, *jvp = NULL;
  assert_int_equal(zmlxi_expr_vjp(e, ZMLX_EXPR_WITH_PRIMAL, &vjp), ZMLX_OK);
  assert_int_equal(vjp->n_inputs, 4);
  assert_string_equal(vjp->input_names[3], "g");
  assert_int_equal(vjp->n_params, 1);
  assert_int_equal(vjp->n_roots, 4); /* f, df/dx, df/dy, df/dz */
  double in[4] = {1.5, -2.0, 7.0, 3.0}, par[1] = {0.5}, out[4];
  eval_all(vjp, in, par, out);
  assert_true(out[0] == 1.5 * 1.5 * -2.0 + 0.5);
  assert_true(out[1] == 3.0 * 2 * 1.5 * -2.0);
  assert_true(out[2] == 3.0 * 1.5 * 1.5);
  double zero = -1;
  assert_true(zmlxi_expr_root_is_const(vjp, 3, &zero) && zero == 0.0);

  assert_int_equal(zmlxi_expr_jvp(e, 0, &jvp), ZMLX_OK);
  assert_int_equal(jvp->n_inputs, 6);
  assert_string_equal(jvp->input_names[3], "t_x");
  assert_string_equal(jvp->input_names[5], "t_z");
  assert_int_equal(jvp->n_roots, 1);
  assert_false(zmlxi_expr_uses_input(jvp, 5)); /* t_z: f does not depend on z */
  double tin[6] = {1.5, -2.0, 7.0, 1.0, 10.0, 100.0}, t[1];
  eval_all(jvp, tin, par, t);
  assert_true(t[0] == 2 * 1.5 * -2.0 + 1.5 * 1.5 * 10.0);

  /* Second order: the VJP of the VJP (several roots, several cotangents). */
  zmlx_expr *g1 = NULL, *g2 = NULL;
  assert_int_equal(zmlxi_expr_vjp(e, 0, &g1), ZMLX_OK);
  assert_int_equal(zmlxi_expr_vjp(g1, 0, &g2), ZMLX_OK);
  assert_int_equal(g2->n_inputs, 7); /* x y z g g0 g1 g2 */
  assert_string_equal(g2->input_names[4], "g0");
  assert_string_equal(g2->input_names[6], "g2");
  assert_int_equal(g2->n_roots, 4);
  /* Hessian row for x with g = 1: d(2xy)/dx = 2y, d(2xy)/dy = 2x. */
  double hin[7] = {1.5, -2.0, 7.0, 1.0, 1.0, 0.0, 0.0}, h[4];
  eval_all(g2, hin, par, h);
  assert_true(h[0] == 2 * -2.0 && h[1] == 2 * 1.5 && h[2] == 0.0);
  assert_true(h[3] == 2 * 1.5 * -2.0); /* d/dg of g * 2xy */
  char *s = emit(g2);
  assert_only_allowed_identifiers(s);
  free(s);
  zmlxi_expr_free(g1);
  zmlxi_expr_free(g2);
  zmlxi_expr_free(e);
  zmlxi_expr_free(vjp);
  zmlxi_expr_free(jvp);

  /* Generated names never collide with the user's. */
  const char *ins[] = {"g", "t_g"};
  assert_int_equal(zmlxi_expr_parse("g * t_g", ins, 2, NULL, 0, &e), ZMLX_OK);
  assert_int_equal(zmlxi_expr_vjp(e, 0, &vjp), ZMLX_OK);
  assert_string_equal(vjp->input_names[2], "g_");
  assert_int_equal(zmlxi_expr_jvp(e, 0, &jvp), ZMLX_OK);
  assert_string_equal(jvp->input_names[2], "t_g_");
  assert_string_equal(jvp->input_names[3], "t_t_g");
  s = to_string(vjp);
  assert_string_equal(s, "[(t_g * g_), (g * g_)]");
  free(s);
  zmlxi_expr_free(e);
  zmlxi_expr_free(vjp);
  zmlxi_expr_free(jvp);
  assert_int_equal(zmlxi_expr_vjp(NULL, 0, &vjp), ZMLX_ERR_NULL_ARG);
}

/* ---------------------------------------------------- hostile / bad text */

static void test_errors(void **state) {
  (void)state;
  expect_error("x + foo(y)", "1:5: unknown function 'foo'\n  x + foo(y)\n      ^", "");
  expect_error("x); } __kernel void evil(", "1:2: unmatched ')'", "");
  expect_error("x); } __kernel void evil(", "1:2:", "\n  x); } __kernel void evil(\n   ^");
  expect_error("x /* */", "1:3: comments are not part of the expression language", "");
  expect_error("x // c", "1:3:", "comments");
  expect_error("x # c", "1:3:", "comments");
  expect_error("x + q", "1:5: unknown identifier 'q' (inputs: x, y, z; parameters: alpha)", "");
  expect_error("__kernel", "1:1:", "unknown identifier '__kernel'");
  expect_error("clamp(x, 1)", "1:1: function 'clamp' takes 3 arguments, got 2", "");
  expect_error("elu(x, 1, 2)", "1:1: function 'elu' takes 1 to 2 arguments, got 3", "");
  expect_error("exp()", "1:1: function 'exp' takes 1 argument, got 0", "");
  expect_error("x + exp(x, y, z, x, y)", "1:5:", "takes 1 argument, got 5");
  expect_error("x y", "1:3: unexpected 'y' after the end of an expression", "");
  expect_error("x +", "1:4: expected an expression, found end of input", "");
  expect_error("(x", "1:3: expected ')' to close the '(' at 1:1, found end of input", "");
  expect_error("exp(x", "1:6:", "in the call to 'exp' opened at 1:4");
  expect_error("a = x\nb = a +\n", "2:8: expected an expression, found end of line",
               "\n  b = a +\n         ^");
  expect_error("y = 2\nx", "1:1: cannot assign to 'y': it is an input", "");
  expect_error("alpha = 2; x", "1:1:", "it is a parameter");
  expect_error("exp = 2; x", "1:1:", "it is a function");
  expect_error("inf = 2; x", "1:1:", "it is a constant");
  expect_error("s = x", "1:1: the last statement must be the result expression", "");
  expect_error("x; y", "1:1: only the last statement may be a bare expression", "");
  expect_error("x\n\ny\n", "1:1:", "only the last statement");
  expect_error("1.5.2", "1:1: malformed number", "");
  expect_error("2x", "1:1: malformed number", "");
  expect_error("x + 1e", "1:5: malformed number: exponent without digits", "");
  expect_error("0x10", "1:1: malformed number", "");
  expect_error("x < y < z", "1:7: comparisons cannot be chained", "");
  expect_error("x == y != z", "1:8:", "cannot be chained");
  expect_error("x & y", "1:3: unexpected character '&' (did you mean '&&'?)", "");
  expect_error("x | y", "1:3:", "'||'");
  expect_error("x $ y", "1:3: unexpected character '$'", "");
  expect_error("x[0]", "1:2: unexpected character '['", "");
  expect_error("x.y", "1:2: unexpected character '.'", "");
  expect_error("\"x\"", "1:1: unexpected character '\"'", "");
  expect_error("", "1:1: empty expression", "");
  expect_error("  ;\n ; ", "2:4: empty expression", "");
  expect_error("x\x01", "1:2: unexpected byte 0x01", "\n  x?\n   ^");
  expect_error_n("x\0y", 3, "1:2: unexpected byte 0x00", "");
  expect_error("x + \xc3\xa9", "1:5: unexpected byte 0xc3", "\n  x + ??\n      ^");
  expect_error("exp", "1:1: 'exp' is a function: call it as exp(...)", "");
  expect_error("x(1)", "1:1: 'x' is not a function", "");
  expect_error("x ? y", "1:6: expected ':' for the '?' at 1:3, found end of input", "");
  expect_error("a = = y; x", "1:5: expected an expression, found '='", "");
  expect_error("x + (y = 2)", "1:8: expected ')'", "");
  expect_error("(x\n  + foo)", "2:5: unknown identifier 'foo'", "\n    + foo)\n      ^");
  expect_error("a = x; a == y = 3", "1:15: unexpected '='", "did you mean '=='?");
  expect_error("exp(x,)", "1:7: expected an expression, found ')'", "");
  expect_error("sin(x) cos(x)", "1:8:", "unexpected 'cos'");
  /* Identifiers longer than the limit. */
  char *longname = repeat("a", ZMLX_EXPR_MAX_IDENT + 1, "", "", 0);
  expect_error(longname, "1:1: identifier too long", "");
  free(longname);
}

static void test_deep_nesting(void **state) {
  (void)state;
  char *s = repeat("(", 10000, "x", ")", 10000);
  expect_error(s, "1:257: expression nested too deeply (more than 256 levels)", "");
  free(s);
  s = repeat("-", 10000, "x", "", 0);
  expect_error(s, "1:256:", "nested too deeply");
  free(s);
  s = repeat("x**", 10000, "x", "", 0);
  expect_error(s, "1:", "nested too deeply");
  free(s);
  s = repeat("exp(", 10000, "x", ")", 10000);
  expect_error(s, "1:", "nested too deeply");
  free(s);
  s = repeat("x ? x : ", 10000, "x", "", 0);
  expect_error(s, "1:", "nested too deeply");
  free(s);
  s = repeat("where(x, x, ", 10000, "x", ")", 10000);
  expect_error(s, "1:", "nested too deeply");
  free(s);
  s = repeat("x+(", 10000, "x", ")", 10000);
  expect_error(s, "1:", "nested too deeply");
  free(s);
  s = repeat("x < (x && (", 10000, "x", "))", 10000);
  expect_error(s, "1:", "nested too deeply");
  free(s);
  s = repeat("!", 100000, "x", "", 0);
  expect_error(s, "1:", "nested too deeply");
  free(s);
  /* Well inside the limit is fine. */
  s = repeat("(", 200, "x", ")", 200);
  zmlx_expr *e = parse3(s);
  zmlxi_expr_free(e);
  free(s);
  s = repeat("-", 200, "x", "", 0);
  e = parse3(s);
  zmlxi_expr_free(e);
  free(s);
  s = repeat("x + (", 100, "x", ")", 100);
  e = parse3(s);
  zmlxi_expr_free(e);
  free(s);
}

/* Long text: deep graphs without deep nesting must not recurse anywhere. */
static void test_long_inputs(void **state) {
  (void)state;
  const int n = 100000;
  char *s = repeat("x + ", n, "x", "", 0);
  zmlx_expr *e = parse3(s), *vjp = NULL, *jvp = NULL;
  free(s);
  const double in[3] = {0.5, 0, 0};
  assert_true(eval1(e, in, PAR) == 0.5 * (n + 1));
  assert_int_equal(zmlxi_expr_vjp(e, 0, &vjp), ZMLX_OK);
  assert_int_equal(zmlxi_expr_jvp(e, 0, &jvp), ZMLX_OK);
  double gin[4] = {0.5, 0, 0, 1.0}, g[3];
  eval_all(vjp, gin, PAR, g);
  assert_true(g[0] == n + 1);
  char *src = emit(vjp), *text = to_string(e);
  assert_non_null(src);
  zmlx_expr *back = parse3(text);
  assert_true(eval1(back, in, PAR) == 0.5 * (n + 1));
  free(src);
  free(text);
  zmlxi_expr_free(back);
  zmlxi_expr_free(e);
  zmlxi_expr_free(vjp);
  zmlxi_expr_free(jvp);

  /* A long chain of statements. */
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlxi_sb_append(&sb, "a = x\n");
  for (int i = 0; i < 20000; i++) zmlxi_sb_append(&sb, "a = sin(a) * 0.5 + x\n");
  zmlxi_sb_append(&sb, "a");
  e = parse3(sb.data);
  zmlxi_sb_free(&sb);
  assert_int_equal(zmlxi_expr_vjp(e, 0, &vjp), ZMLX_OK);
  src = emit(vjp);
  assert_true(strlen(src) > 20000);
  free(src);
  zmlxi_expr_free(e);
  zmlxi_expr_free(vjp);

  /* An error at the end of a very long line shows a window around it. */
  s = repeat("x + ", 5000, "$", "", 0);
  expect_error(s, "1:20001: unexpected character '$'", "\n  ...x + x + ");
  assert_non_null(strstr(zmlx_last_error(), "$\n  "));
  assert_true(strlen(zmlx_last_error()) < 400);
  free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_precedence),
      cmocka_unit_test(test_numbers),
      cmocka_unit_test(test_inputs_and_names),
      cmocka_unit_test(test_every_function),
      cmocka_unit_test(test_function_table_covered),
      cmocka_unit_test(test_subgradients),
      cmocka_unit_test(test_random_programs),
      cmocka_unit_test(test_simplifier),
      cmocka_unit_test(test_folding_edge_values),
      cmocka_unit_test(test_to_string_names),
      cmocka_unit_test(test_cse_in_emitted_source),
      cmocka_unit_test(test_stable_forms),
      cmocka_unit_test(test_emit_format),
      cmocka_unit_test(test_emit_ctx),
      cmocka_unit_test(test_emit_deterministic),
      cmocka_unit_test(test_derivative_graphs),
      cmocka_unit_test(test_errors),
      cmocka_unit_test(test_deep_nesting),
      cmocka_unit_test(test_long_inputs),
  };
  return zt_finish(cmocka_run_group_tests(tests, NULL, NULL), ZT_COUNT(tests));
}
