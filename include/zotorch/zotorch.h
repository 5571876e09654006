// Umbrella header: everything a zotorch user needs.
#pragma once

#include <zotorch/adamezo.h>
#include <zotorch/checkpoint.h>
#include <zotorch/distribution.h>
#include <zotorch/fzoo.h>
#include <zotorch/mezo.h>
#include <zotorch/noise.h>
#include <zotorch/trajectory.h>
#include <zotorch/version.h>
#include <zotorch/zo_optimizer.h>
