/* `zmlx demo`'s loss curves as a PNG, drawn with cairo: training loss per
 * step and validation loss at each evaluation, against the step, with
 * axes, ticks and a legend. Without cairo (a build where it was not found)
 * the plot is skipped and the summary says so. */
#include <math.h>
#include <stdio.h>

#include "demo.h"

#ifdef ZMLX_HAVE_CAIRO
#include <cairo.h>

enum { W = 800, H = 500, LEFT = 70, RIGHT = 20, TOP = 40, BOTTOM = 50 };

typedef struct frame {
  double x0, x1, y0, y1; /* data ranges */
} frame;

static double px(const frame *f, double x) { return LEFT + (x - f->x0) / (f->x1 - f->x0) * (W - LEFT - RIGHT); }
static double py(const frame *f, double y) { return H - BOTTOM - (y - f->y0) / (f->y1 - f->y0) * (H - TOP - BOTTOM); }

static void text(cairo_t *cr, double x, double y, const char *s, double align) {
  cairo_text_extents_t e;
  cairo_text_extents(cr, s, &e);
  cairo_move_to(cr, x - align * e.width, y);
  cairo_show_text(cr, s);
}

static void axes(cairo_t *cr, const frame *f) {
  cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
  cairo_set_line_width(cr, 1);
  cairo_rectangle(cr, LEFT, TOP, W - LEFT - RIGHT, H - TOP - BOTTOM);
  cairo_stroke(cr);
  cairo_set_font_size(cr, 12);
  char buf[32];
  for (int i = 0; i <= 5; i++) {
    double x = f->x0 + (f->x1 - f->x0) * i / 5, y = f->y0 + (f->y1 - f->y0) * i / 5;
    snprintf(buf, sizeof buf, "%.0f", x);
    text(cr, px(f, x), H - BOTTOM + 18, buf, 0.5);
    snprintf(buf, sizeof buf, "%.1f", y);
    text(cr, LEFT - 8, py(f, y) + 4, buf, 1);
    cairo_set_source_rgb(cr, 0.9, 0.9, 0.9);
    cairo_move_to(cr, LEFT, py(f, y));
    cairo_line_to(cr, W - RIGHT, py(f, y));
    cairo_stroke(cr);
    cairo_set_source_rgb(cr, 0.2, 0.2, 0.2);
  }
  text(cr, (LEFT + W - RIGHT) / 2.0, H - 12, "step", 0.5);
  cairo_save(cr);
  cairo_move_to(cr, 22, (TOP + H - BOTTOM) / 2.0 + 50);
  cairo_rotate(cr, -M_PI / 2);
  cairo_show_text(cr, "loss (nats / byte)");
  cairo_restore(cr);
}

/* One curve: the points whose `val` (or loss) is finite, joined. */
static void curve(cairo_t *cr, const frame *f, const demo_run *r, int val, double red,
                  double green, double blue) {
  cairo_set_source_rgb(cr, red, green, blue);
  cairo_set_line_width(cr, val ? 2.5 : 1.2);
  int started = 0;
  for (int i = 0; i < r->n_curve; i++) {
    double y = val ? r->curve[i].val : r->curve[i].loss;
    if (!isfinite(y)) continue;
    double x = px(f, r->curve[i].step), yy = py(f, fmin(y, f->y1));
    if (started) cairo_line_to(cr, x, yy);
    else cairo_move_to(cr, x, yy);
    started = 1;
  }
  cairo_stroke(cr);
}

static void legend(cairo_t *cr, const char *title) {
  cairo_set_font_size(cr, 14);
  cairo_set_source_rgb(cr, 0, 0, 0);
  text(cr, LEFT, TOP - 14, title, 0);
  cairo_set_font_size(cr, 12);
  cairo_set_source_rgb(cr, 0.25, 0.45, 0.8);
  text(cr, W - RIGHT - 10, TOP + 20, "training loss", 1);
  cairo_set_source_rgb(cr, 0.9, 0.45, 0.1);
  text(cr, W - RIGHT - 10, TOP + 38, "validation loss", 1);
}

int demo_plot(const demo_run *r, const char *path) {
  if (r->n_curve < 1) return -1;
  frame f = {0, r->curve[r->n_curve - 1].step, 0, 0};
  for (int i = 0; i < r->n_curve; i++) f.y1 = fmax(f.y1, r->curve[i].loss);
  f.y1 = fmax(1, ceil(fmin(f.y1, 8.0)));
  if (f.x1 <= 0) f.x1 = 1;
  cairo_surface_t *s = cairo_image_surface_create(CAIRO_FORMAT_RGB24, W, H);
  cairo_t *cr = cairo_create(s);
  cairo_set_source_rgb(cr, 1, 1, 1);
  cairo_paint(cr);
  axes(cr, &f);
  curve(cr, &f, r, 0, 0.25, 0.45, 0.8);
  curve(cr, &f, r, 1, 0.9, 0.45, 0.1);
  char title[128];
  snprintf(title, sizeof title, "zmlx demo (%s config): byte-level MoE transformer", r->cfg->name);
  legend(cr, title);
  cairo_destroy(cr);
  cairo_status_t st = cairo_surface_write_to_png(s, path);
  cairo_surface_destroy(s);
  return st == CAIRO_STATUS_SUCCESS ? 0 : -1;
}

#else

int demo_plot(const demo_run *r, const char *path) {
  (void)r, (void)path;
  return 1; /* built without cairo */
}

#endif
