from django.contrib import admin
from django.urls import path

from ordinaut import health

urlpatterns = [
    path("", health.index, name="index"),
    path("health", health.health, name="health"),
    path("health/", health.health),
    path("health/ready", health.ready, name="health-ready"),
    path("health/ready/", health.ready),
    path("health/live", health.live, name="health-live"),
    path("health/live/", health.live),
    path("metrics", health.metrics, name="metrics"),
    path("admin/", admin.site.urls),
]

handler404 = "ordinaut.errors.json_404"
handler500 = "ordinaut.errors.json_500"
