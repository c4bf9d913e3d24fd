"""The async-view benchmark's two views: the same unit of work, sync and async."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse

from django_uow import unit_of_work

from .models import Account


@unit_of_work(retries=5)
def credit_sync(request: HttpRequest, pk: int) -> HttpResponse:
    account = Account.objects.get(pk=pk)
    account.credit(1)
    account.save()
    return HttpResponse(status=204)


@unit_of_work(retries=5)
async def credit_async(request: HttpRequest, pk: int) -> HttpResponse:
    account = await Account.objects.aget(pk=pk)
    account.credit(1)
    await account.asave()
    return HttpResponse(status=204)
