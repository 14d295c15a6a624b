from django.http import JsonResponse
from django.urls import path


def hello(request):
    from django.conf import settings

    return JsonResponse({"hello": "Django", "debug": settings.DEBUG, "secret_length": len(settings.SECRET_KEY)})


urlpatterns = [path("", hello)]
