import factory
from django.utils import timezone

from mailer.models import Delivery
from users.models import User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User

    email = factory.Sequence(lambda n: f"person{n}@example.com")
    password = factory.django.Password("correct horse battery staple")


class DeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Delivery

    user = factory.SubFactory(UserFactory)
    kind = Delivery.Kind.WELCOME
    task_id = factory.Faker("uuid4")
    message_id = factory.Sequence(lambda n: f"<welcome.{n}@example.com>")
    lease_expires_at = factory.LazyFunction(timezone.now)
